// `chat [MODEL] [key=value ...] [options]`: an interactive chat in the terminal, like
// `transformers chat`; in-process on WebGPU, or through a running `serve` with --url.
// Not interactive when stdin is not a terminal or --prompt/--json is given: all of stdin
// (or --prompt) is one prompt and only the reply goes to stdout.

import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { validateTools, type ReplyPiece, type ResponseFormat, type ToolDefinition } from '@webgpu-chat/chat';
import { CHAT_HELP, UsageError, bundledModelPath, parseChatArgs, type ChatArgs } from './args.ts';
import { BUNDLED_MODEL_ID, LocalBackend, RemoteBackend, loadLocalModel, type ChatBackend } from './backend.ts';
import { schemaFileFormat } from './chat-format.ts';
import { COMMANDS_HELP, ChatSession, formatTurn } from './session.ts';

const err = (s: string) => process.stderr.write(s + '\n');

async function readStdin(): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

async function openBackend(args: ChatArgs): Promise<ChatBackend> {
  if (args.url) {
    // The server holds the weights: how they are loaded is serve's choice.
    for (const [name, v] of [['--quantize', args.quantize], ['--draft', args.draft], ['--dtype', args.dtype === 'auto' ? undefined : args.dtype]] as const) {
      if (v !== undefined) throw new UsageError(`${name} is an option of \`serve\` when chat uses --url (start the server with it)`);
    }
    return RemoteBackend.connect(args.url, args.model);
  }
  const spec = args.model ?? bundledModelPath();
  if (!args.model) err(`chat: no MODEL given: using the bundled default story model (${spec})`);
  const loaded = await loadLocalModel(spec, {
    dtype: args.dtype,
    ...(args.quantize ? { quantize: args.quantize } : {}),
    ...(args.draft ? { draft: args.draft } : {}),
    ...(args.model ? {} : { modelId: BUNDLED_MODEL_ID }),
    ...(args.maxContext ? { maxContext: args.maxContext } : {}),
    ...(args.toolCallParser ? { toolCallParser: args.toolCallParser } : {}),
  });
  if (loaded.plainTemplate) {
    err(`chat: ${loaded.modelId} has no chat template: the conversation is fed to it as plain text (messages joined), so it continues your text`);
  }
  return new LocalBackend(loaded);
}

/** --tools FILE.json: OpenAI's list of tools, checked. */
async function readTools(path: string): Promise<ToolDefinition[]> {
  let data: unknown;
  try {
    data = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`--tools ${path}: ${(e as Error).message}`);
  }
  try {
    return validateTools(data);
  } catch (e) {
    throw new UsageError(`--tools ${path}: ${(e as Error).message}`);
  }
}

const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[22m` : s);

/** How a reply piece reads in the terminal: text as it is, reasoning dimmed, a call on its own line. */
function show(p: ReplyPiece): string {
  if (p.kind === 'content') return p.text;
  if (p.kind === 'reasoning') return dim(p.text);
  return `\n[tool call] ${p.call.name}(${p.call.arguments})  (answer with !tool RESULT)\n`;
}

/** One prompt, no terminal: the reply on stdout (or the result as JSON), the summary on stderr. */
async function runOnce(session: ChatSession, prompt: string, json: boolean): Promise<void> {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  let reply = '';
  let reasoning = '';
  const t = await session.reply(prompt, (piece) => {
    if (piece.kind === 'content') reply += piece.text;
    if (piece.kind === 'reasoning') reasoning += piece.text;
    if (!json) process.stdout.write(show(piece));
  }, controller.signal);
  if (json) {
    process.stdout.write(
      JSON.stringify({
        model: session.backend.modelId,
        prompt,
        reply,
        ...(reasoning ? { reasoning } : {}),
        ...(session.pendingCalls.length ? { tool_calls: session.pendingCalls } : {}),
        finish_reason: t?.finishReason ?? null,
        usage: t ? { prompt_tokens: t.promptTokens, completion_tokens: t.newTokens, total_tokens: t.promptTokens + t.newTokens } : null,
        tokens_per_second: t?.tokensPerSecond ?? null,
        time_to_first_token_ms: t?.timeToFirstTokenMs ?? null,
        seconds: t?.seconds ?? null,
        ...(t?.speculative ? { speculative: t.speculative } : {}),
      }) + '\n',
    );
  } else {
    process.stdout.write('\n');
    if (t) err(formatTurn(t));
  }
}

async function interactive(session: ChatSession): Promise<void> {
  const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: '> ', terminal: true });
  const pending: string[] = [];
  let wake: ((line: string | null) => void) | undefined;
  let closed = false;
  rl.on('line', (line) => {
    if (wake) {
      const w = wake;
      wake = undefined;
      w(line);
    } else {
      pending.push(line);
    }
  });
  rl.on('close', () => {
    closed = true;
    wake?.(null);
  });
  const nextLine = (): Promise<string | null> => {
    if (pending.length) return Promise.resolve(pending.shift()!);
    if (closed) return Promise.resolve(null);
    return new Promise((r) => (wake = r));
  };
  let current: AbortController | undefined;
  rl.on('SIGINT', () => {
    if (current) {
      current.abort();
    } else {
      rl.write(null, { ctrl: true, name: 'u' });
      process.stdout.write('\n(type !exit or press Ctrl-D to leave)\n');
      rl.prompt();
    }
  });

  process.stdout.write(`Chatting with ${session.backend.modelId}. ${COMMANDS_HELP}\n\n`);
  for (;;) {
    rl.prompt();
    const line = await nextLine();
    if (line === null) break;
    if (!line.trim()) continue;
    try {
      const r = await session.command(line);
      if ('exit' in r) break;
      if ('output' in r) {
        process.stdout.write(r.output + '\n');
        continue;
      }
      current = new AbortController();
      const write = (p: ReplyPiece) => process.stdout.write(show(p));
      const t = 'respond' in r ? await session.respond(write, current.signal) : await session.reply(line, write, current.signal);
      process.stdout.write('\n');
      if (t) err(formatTurn(t));
    } catch (e) {
      err(e instanceof UsageError ? e.message : `${(e as Error).name}: ${(e as Error).message}`);
    } finally {
      current = undefined;
    }
  }
  rl.close();
  process.stdout.write('\n');
}

async function main(argv: string[]): Promise<number> {
  let args: ChatArgs;
  try {
    args = parseChatArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      err(`chat: ${e.message}`);
      return 2;
    }
    throw e;
  }
  if (args.help) {
    process.stdout.write(CHAT_HELP);
    return 0;
  }
  const oneShot = args.json || args.prompt !== undefined || !process.stdin.isTTY;
  // Read piped input first, so a model load failure cannot leave the writer blocked.
  const prompt = oneShot ? (args.prompt ?? (await readStdin())) : undefined;
  if (oneShot && !prompt!.trim()) {
    err('chat: no prompt: pipe one on stdin or pass --prompt TEXT');
    return 2;
  }
  let backend: ChatBackend;
  let tools: ToolDefinition[] = [];
  let responseFormat: ResponseFormat | undefined;
  try {
    if (args.toolsFile !== undefined) tools = await readTools(args.toolsFile);
    // A schema the engine cannot enforce is refused before the model loads.
    responseFormat = args.jsonSchema !== undefined ? await schemaFileFormat(args.jsonSchema) : undefined;
    backend = await openBackend(args);
  } catch (e) {
    if (e instanceof UsageError) {
      err(`chat: ${e.message}`);
      return 2;
    }
    throw e;
  }
  const session = new ChatSession(backend, { flags: args.generation, tools, ...(args.system !== undefined ? { system: args.system } : {}), ...(responseFormat ? { responseFormat } : {}) });
  try {
    if (oneShot) await runOnce(session, prompt!.replace(/\r?\n$/, ''), args.json);
    else await interactive(session);
  } finally {
    await backend.dispose();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    err(`chat: ${(e as Error).name}: ${(e as Error).message}`);
    process.exit(1);
  },
);
