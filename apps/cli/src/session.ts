// The state of an interactive chat and its `!commands`, apart from the terminal, so the
// commands can be tested without one. Modelled on `transformers chat`.

import { readFile, writeFile } from 'node:fs/promises';
import { toolCallMessage, type Message, type ReplyPiece, type ResponseFormat, type ToolCallMessage, type ToolDefinition } from '@webgpu-chat/chat';
import { checkOneDrafter, formatGenerationFlags, NO_DRAFT, parseGenerationFlags, SELF_Q4, takeDraftPairs, UsageError, type GenerationFlags } from './args.ts';
import { formatAcceptance, type ChatBackend, type TurnStats } from './backend.ts';
import { formatResponseFormat, parseResponseFormatSetting, takeResponseFormatPair } from './chat-format.ts';

export const COMMANDS_HELP = `Commands:
  !help                  this list
  !clear                 start a new conversation
  !save [PATH]           save the conversation and settings as JSON
  !load PATH             load a conversation saved with !save
  !set key=value ...     change generation flags (e.g. !set do_sample=true temperature=0.7),
                         or the draft model: draft=MODEL, draft=${SELF_Q4}, draft=${NO_DRAFT};
                         prompt_lookup_num_tokens=10 drafts from the conversation itself (0: off);
                         or the reply format: response_format=json (any JSON object),
                         response_format=FILE (a JSON schema), response_format=text
  !status                model, dtype, quantization, draft, adapter, context used, last turn's speed
  !system TEXT           set the system prompt (empty to remove it)
  !tool TEXT             the result of the model's pending tool call (with --tools)
  !exit                  leave (also Ctrl-D). Ctrl-C stops the current reply.`;

/** What !save writes and !load reads. */
export interface SavedChat {
  model: string;
  settings: { generation: GenerationFlags; system?: string };
  messages: Message[];
  savedAt: string;
}

/** `respond`: the history now ends with tool results, and the model should answer them. */
export type CommandResult = { output: string } | { exit: true } | { notACommand: true } | { respond: true };

/** `N tokens in X s (Y tokens/s, TTFT Z ms[, draft acceptance ...])`: the line after each reply. */
export function formatTurn(t: TurnStats): string {
  const stopped = t.finishReason === 'abort' ? ' [stopped]' : t.finishReason === 'length' ? ' [max_new_tokens reached]' : '';
  const draft = t.speculative ? `, ${formatAcceptance(t.speculative)}` : '';
  return `${t.newTokens} tokens in ${t.seconds.toFixed(2)} s (${t.tokensPerSecond.toFixed(1)} tokens/s, TTFT ${t.timeToFirstTokenMs.toFixed(0)} ms${draft})${stopped}`;
}

const bytes = (n: number) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

function defaultSavePath(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  return `chat-${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}.json`;
}

export class ChatSession {
  /** The conversation without the system prompt. */
  turns: Message[] = [];
  flags: GenerationFlags;
  system: string | undefined;
  /** Replies are held to this (constrained decoding); undefined: plain text. */
  responseFormat: ResponseFormat | undefined;
  lastTurn: TurnStats | undefined;
  /** Tools offered to the model (--tools). */
  readonly tools: readonly ToolDefinition[];
  /** Calls of the last reply still waiting for their results (!tool). */
  pendingCalls: ToolCallMessage[] = [];

  constructor(
    readonly backend: ChatBackend,
    opts: { flags?: GenerationFlags; system?: string; tools?: readonly ToolDefinition[]; responseFormat?: ResponseFormat } = {},
  ) {
    this.flags = { ...opts.flags };
    this.system = opts.system;
    this.tools = opts.tools ?? [];
    this.responseFormat = opts.responseFormat;
  }

  /** The messages sent to the model: the system prompt, then the turns. */
  get messages(): Message[] {
    return this.system ? [{ role: 'system', content: this.system }, ...this.turns] : [...this.turns];
  }

  /**
   * Streams the reply to `prompt`, calling onPiece per piece (text, reasoning, a tool call).
   * An aborted reply keeps what was generated, so the conversation stays consistent with
   * what the user saw.
   */
  async reply(prompt: string, onPiece: (p: ReplyPiece) => void, signal: AbortSignal): Promise<TurnStats | undefined> {
    this.turns.push({ role: 'user', content: prompt });
    return this.respond(onPiece, signal, 1);
  }

  /** Streams the model's answer to the history as it stands (after tool results); `added` turns are taken back on failure. */
  async respond(onPiece: (p: ReplyPiece) => void, signal: AbortSignal, added = 0): Promise<TurnStats | undefined> {
    const reply: Message = { role: 'assistant', content: '' };
    const calls: ToolCallMessage[] = [];
    try {
      for await (const piece of this.backend.stream(this.messages, this.flags, signal, { tools: this.tools, responseFormat: this.responseFormat })) {
        if (piece.kind === 'content') reply.content += piece.text;
        if (piece.kind === 'tool_call') calls.push(toolCallMessage(piece.call, undefined));
        onPiece(piece);
      }
    } catch (e) {
      this.turns.splice(this.turns.length - added, added);
      throw e;
    }
    if (calls.length) reply.tool_calls = calls;
    this.turns.push(reply);
    this.pendingCalls = calls;
    this.lastTurn = this.backend.lastTurn;
    return this.lastTurn;
  }

  async status(): Promise<string> {
    const s = await this.backend.status();
    const lines = [`model:    ${s.model}`, `runs:     ${s.where}`];
    if (s.dtype) lines.push(`dtype:    ${s.dtype}`);
    if (s.quantization || s.dtype) lines.push(`quantize: ${s.quantization ?? 'none'}`);
    if (s.bytesByFormat) {
      const parts = Object.entries(s.bytesByFormat).map(([f, n]) => `${f} ${bytes(n)}`);
      lines.push(`weights:  ${parts.join(', ')}${s.bytesPerToken ? `; ${bytes(s.bytesPerToken)} read per token` : ''}`);
    }
    lines.push(`draft:    ${s.draft ?? 'none'}`);
    if (s.adapter) lines.push(`adapter:  ${s.adapter}`);
    const used = this.lastTurn ? this.lastTurn.promptTokens + this.lastTurn.newTokens : 0;
    lines.push(`context:  ${used} tokens used${s.maxContext ? ` of ${s.maxContext}` : ''} (as of the last reply)`);
    lines.push(`turns:    ${this.turns.length} messages${this.system ? ' + system prompt' : ''}`);
    lines.push(`settings: ${formatGenerationFlags(this.flags)}`);
    lines.push(`format:   ${formatResponseFormat(this.responseFormat)}`);
    lines.push(`last:     ${this.lastTurn ? formatTurn(this.lastTurn) : 'no reply yet'}`);
    return lines.join('\n');
  }

  async save(path: string | undefined): Promise<string> {
    const target = path || defaultSavePath();
    const data: SavedChat = {
      model: this.backend.modelId,
      settings: { generation: this.flags, ...(this.system ? { system: this.system } : {}) },
      messages: this.messages,
      savedAt: new Date().toISOString(),
    };
    await writeFile(target, JSON.stringify(data, null, 2) + '\n');
    return target;
  }

  async load(path: string): Promise<void> {
    let data: SavedChat;
    try {
      data = JSON.parse(await readFile(path, 'utf8')) as SavedChat;
    } catch (e) {
      throw new UsageError(`cannot load ${path}: ${(e as Error).message}`);
    }
    const msgs = data?.messages;
    if (!Array.isArray(msgs) || msgs.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string')) {
      throw new UsageError(`cannot load ${path}: expected a file written by !save (messages of {role, content})`);
    }
    const gen = data.settings?.generation ?? {};
    // Re-validate the saved flags through the parser, so a hand-edited file cannot smuggle bad values.
    this.flags = parseGenerationFlags(Object.entries(gen).map(([k, v]) => `${k}=${v}`));
    const sys = msgs[0]?.role === 'system' ? msgs[0].content : data.settings?.system;
    this.system = sys || undefined;
    this.turns = msgs.filter((m, i) => !(i === 0 && m.role === 'system'));
    this.lastTurn = undefined;
  }

  /** Runs a `!command` line. Lines not starting with '!' are prompts. */
  async command(line: string): Promise<CommandResult> {
    const t = line.trim();
    if (!t.startsWith('!')) return { notACommand: true };
    const m = /^!(\w+)\s*([\s\S]*)$/.exec(t);
    const name = m?.[1] ?? '';
    const rest = (m?.[2] ?? '').trim();
    switch (name) {
      case 'help':
        return { output: COMMANDS_HELP };
      case 'exit':
      case 'quit':
        return { exit: true };
      case 'clear':
        this.turns = [];
        this.pendingCalls = [];
        this.lastTurn = undefined;
        return { output: 'New conversation.' };
      case 'set': {
        if (!rest) return { output: `settings: ${formatGenerationFlags(this.flags)}` };
        const format = takeResponseFormatPair(rest.split(/\s+/));
        const { draft, rest: pairs } = takeDraftPairs(format.rest);
        // Flags and the format are checked before a draft is loaded, so a typo costs no load.
        const flags = parseGenerationFlags(pairs, this.flags);
        checkOneDrafter(draft ?? this.backend.draftSpec, flags.prompt_lookup_num_tokens);
        const responseFormat = format.value === undefined ? this.responseFormat : await parseResponseFormatSetting(format.value);
        const lines: string[] = [];
        if (draft !== undefined) {
          if (!this.backend.setDraft) throw new UsageError('this chat cannot change the draft model');
          lines.push(await this.backend.setDraft(draft === NO_DRAFT ? undefined : draft));
        }
        this.flags = flags;
        this.responseFormat = responseFormat;
        lines.push(`settings: ${formatGenerationFlags(this.flags)}`);
        if (format.value !== undefined) lines.push(`format:   ${formatResponseFormat(this.responseFormat)}`);
        return { output: lines.join('\n') };
      }
      case 'status':
        return { output: await this.status() };
      case 'save':
        return { output: `Saved to ${await this.save(rest || undefined)}` };
      case 'load':
        if (!rest) throw new UsageError('!load needs a path');
        await this.load(rest);
        return { output: `Loaded ${this.turns.length} messages from ${rest}; settings: ${formatGenerationFlags(this.flags)}` };
      case 'system':
        this.system = rest || undefined;
        return { output: rest ? 'System prompt set.' : 'System prompt removed.' };
      case 'tool': {
        const call = this.pendingCalls.shift();
        if (!call) throw new UsageError('no tool call is waiting for a result');
        this.turns.push({ role: 'tool', content: rest, tool_call_id: call.id, name: call.function.name });
        if (this.pendingCalls.length) return { output: `Result of ${call.function.name} added; ${this.pendingCalls.length} more call(s) wait: next is ${this.pendingCalls[0]!.function.name}.` };
        return { respond: true };
      }
      default:
        throw new UsageError(`unknown command '!${name}'. ${COMMANDS_HELP}`);
    }
  }
}
