// Command-line parsing for `chat` and `serve`: generation flags as `key=value` pairs with
// Transformers' GenerationConfig names, and a few `--options`. No parsing library: the
// grammar is small and the errors have to name the valid keys.

import { fileURLToPath } from 'node:url';
import { ASSISTANT_TOKENS_SCHEDULES, MAX_MATCHING_NGRAM_SIZE, MAX_NUM_ASSISTANT_TOKENS, TOOL_CALL_FORMATS, type AssistantTokensSchedule, type GenerationConfig, type ToolCallFormat } from '@webgpu-chat/chat';

export class UsageError extends Error {
  override name = 'UsageError';
}

export type Dtype = 'auto' | 'f32' | 'f16' | 'bf16';
export const DTYPES: readonly Dtype[] = ['auto', 'f32', 'f16', 'bf16'];

export type Quantize = 'q8' | 'q4';
export const QUANTIZE: readonly Quantize[] = ['q8', 'q4'];

/** `--draft self-q4`: the target's own folder loaded again with q4 linear layers as the draft. */
export const SELF_Q4 = 'self-q4';
/** `draft=none` in `!set`: decode without a draft. */
export const NO_DRAFT = 'none';

/** The generation flags a user may set, with the check each value must pass. */
type FlagKind = 'boolean' | 'count' | 'nonNegativeInt' | 'nonNegative' | 'unit' | 'positive' | 'draftLength' | 'lookupLength' | 'ngram' | 'schedule';
const SCHEDULES = ASSISTANT_TOKENS_SCHEDULES;
const FLAG_KINDS = {
  do_sample: 'boolean',
  max_new_tokens: 'count',
  temperature: 'nonNegative',
  top_p: 'unit',
  top_k: 'nonNegativeInt',
  min_p: 'unit',
  repetition_penalty: 'positive',
  seed: 'nonNegativeInt',
  num_assistant_tokens: 'draftLength',
  num_assistant_tokens_schedule: 'schedule',
  assistant_confidence_threshold: 'unit',
  prompt_lookup_num_tokens: 'lookupLength',
  max_matching_ngram_size: 'ngram',
} as const satisfies Record<string, FlagKind>;

export type GenerationFlag = keyof typeof FLAG_KINDS;
export type GenerationFlags = Pick<GenerationConfig, GenerationFlag>;
export const GENERATION_FLAGS = Object.keys(FLAG_KINDS) as GenerationFlag[];

const KIND_TEXT: Record<FlagKind, string> = {
  boolean: 'true or false',
  count: 'an integer >= 1',
  nonNegativeInt: 'an integer >= 0',
  nonNegative: 'a number >= 0',
  unit: 'a number in [0, 1]',
  positive: 'a number > 0',
  draftLength: `an integer in 1..${MAX_NUM_ASSISTANT_TOKENS}`,
  lookupLength: `an integer in 0..${MAX_NUM_ASSISTANT_TOKENS} (0: off)`,
  ngram: `an integer in 1..${MAX_MATCHING_NGRAM_SIZE}`,
  schedule: SCHEDULES.join(', '),
};

function validKeysText(): string {
  return GENERATION_FLAGS.map((k) => `${k} (${KIND_TEXT[FLAG_KINDS[k]]})`).join(', ') + `, draft (${DRAFT_TEXT})`;
}

const DRAFT_TEXT = `a model folder or Hub id sharing the tokenizer, ${SELF_Q4}, or ${NO_DRAFT}`;

function parseFlagValue(key: GenerationFlag, raw: string): boolean | number | string {
  const kind: FlagKind = FLAG_KINDS[key];
  const bad = () => new UsageError(`invalid value '${raw}' for ${key}: expected ${KIND_TEXT[kind]}`);
  if (kind === 'boolean') {
    // Python spellings too, since users copy flags from `transformers chat`.
    if (/^(true|1)$/i.test(raw)) return true;
    if (/^(false|0)$/i.test(raw)) return false;
    throw bad();
  }
  if (kind === 'schedule') {
    if (!SCHEDULES.includes(raw as AssistantTokensSchedule)) throw bad();
    return raw;
  }
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw.trim())) throw bad();
  const v = Number(raw);
  const integer = kind === 'count' || kind === 'nonNegativeInt' || kind === 'draftLength' || kind === 'lookupLength' || kind === 'ngram';
  if (!Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) throw bad();
  if (kind === 'count' && v < 1) throw bad();
  if ((kind === 'nonNegativeInt' || kind === 'nonNegative') && v < 0) throw bad();
  if (kind === 'unit' && (v < 0 || v > 1)) throw bad();
  if (kind === 'positive' && v <= 0) throw bad();
  if (kind === 'draftLength' && (v < 1 || v > MAX_NUM_ASSISTANT_TOKENS)) throw bad();
  if (kind === 'lookupLength' && (v < 0 || v > MAX_NUM_ASSISTANT_TOKENS)) throw bad();
  if (kind === 'ngram' && (v < 1 || v > MAX_MATCHING_NGRAM_SIZE)) throw bad();
  return v;
}

export function isGenerationFlag(key: string): key is GenerationFlag {
  return Object.hasOwn(FLAG_KINDS, key);
}

/** Parses `key=value` pairs onto a copy of `base`. Unknown keys and bad values throw a UsageError naming the valid ones. */
export function parseGenerationFlags(pairs: readonly string[], base: GenerationFlags = {}): GenerationFlags {
  const out: Record<string, boolean | number | string> = { ...base };
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`expected key=value, got '${pair}'. Valid keys: ${validKeysText()}`);
    const key = pair.slice(0, eq);
    if (!isGenerationFlag(key)) throw new UsageError(`unknown generation flag '${key}'. Valid keys: ${validKeysText()}`);
    out[key] = parseFlagValue(key, pair.slice(eq + 1));
  }
  return out as GenerationFlags;
}

/**
 * Splits `draft=MODEL` pairs (a session setting, not a generation flag) from the rest;
 * the last one wins. An empty value is a UsageError.
 */
export function takeDraftPairs(pairs: readonly string[]): { draft?: string; rest: string[] } {
  let draft: string | undefined;
  const rest: string[] = [];
  for (const p of pairs) {
    if (!p.startsWith('draft=')) {
      rest.push(p);
      continue;
    }
    draft = p.slice('draft='.length);
    if (!draft) throw new UsageError(`draft needs a value: ${DRAFT_TEXT}`);
  }
  return draft === undefined ? { rest } : { draft, rest };
}

/**
 * A draft model and prompt lookup are two drafters for one step: a UsageError naming both
 * when both are on.
 */
export function checkOneDrafter(draft: string | undefined, lookupTokens: number | undefined): void {
  if (draft !== undefined && draft !== NO_DRAFT && (lookupTokens ?? 0) > 0) {
    throw new UsageError(`draft=${draft} and prompt_lookup_num_tokens=${lookupTokens} cannot both be on: prompt lookup drafts from the text itself (set prompt_lookup_num_tokens=0 or draft=${NO_DRAFT})`);
  }
}

/** The flags as `key=value` text, in the order of GENERATION_FLAGS. */
export function formatGenerationFlags(flags: GenerationFlags): string {
  const parts = GENERATION_FLAGS.filter((k) => flags[k] !== undefined).map((k) => `${k}=${flags[k]}`);
  return parts.length ? parts.join(' ') : '(model defaults)';
}

/** The tiny story model shipped in the repository (models/stories260K), used when no MODEL is given. */
export function bundledModelPath(): string {
  return fileURLToPath(new URL('../../../models/stories260K', import.meta.url));
}

export interface ChatArgs {
  /** Local folder or Hub repo id; undefined means the bundled model. */
  model?: string;
  generation: GenerationFlags;
  system?: string;
  dtype: Dtype;
  /** --quantize: quantize the linear layers while loading. */
  quantize?: Quantize;
  /** --draft / draft=: a draft model for speculative decoding (a folder, Hub id or 'self-q4'). */
  draft?: string;
  maxContext?: number;
  /** --tool-call-parser: how the model writes tool calls, where its template doesn't show it. */
  toolCallParser?: ToolCallFormat;
  /** --tools: a JSON file with the tools offered to the model (OpenAI's list). */
  toolsFile?: string;
  json: boolean;
  /** --prompt: the prompt for a non-interactive run. */
  prompt?: string;
  /** --json-schema: replies are JSON valid against the schema in this file. */
  jsonSchema?: string;
  /** --url: talk to a running `serve` instead of loading the model in-process. */
  url?: string;
  help: boolean;
}

export interface ServeArgs {
  model?: string;
  dtype: Dtype;
  quantize?: Quantize;
  /** A draft model every completion is decoded with (a folder, Hub id or 'self-q4'). */
  draft?: string;
  toolCallParser?: ToolCallFormat;
  /** Prompt lookup for every completion that does not set its own (--prompt-lookup-num-tokens, --max-matching-ngram-size). */
  lookup?: Pick<GenerationConfig, 'prompt_lookup_num_tokens' | 'max_matching_ngram_size'>;
  host: string;
  port: number;
  apiKey?: string;
  maxContext?: number;
  /** Requests decoded together (continuous batching). */
  parallel: number;
  /** Requests waiting for a place in the batch before new ones get 503. */
  maxQueue: number;
  /** Browser origins allowed to call the server (CORS); none by default. */
  corsOrigins: string[];
  /** Seconds running requests get to finish after SIGTERM/SIGINT. */
  shutdownTimeout: number;
  /** Seconds a response_format or forced tool-call schema may take to compile (400 beyond). */
  constraintTimeout: number;
  /** Worker threads for constrained decoding. */
  constraintWorkers: number;
  /** Compile every step size's kernels before /health says ready (--no-warmup: on first use). */
  warmup: boolean;
  help: boolean;
}

/** Requests serve decodes together unless --parallel says otherwise: on a software adapter a step over 8 tokens costs about 1.6 single-token steps, on a GPU about one. */
export const DEFAULT_PARALLEL = 8;
/** Most --parallel: each running request holds a KV sequence of up to --max-context tokens. */
export const MAX_PARALLEL = 64;

/** Seconds a SIGTERM gives running requests, under the 30 s a container runtime waits before SIGKILL. */
export const DEFAULT_SHUTDOWN_TIMEOUT = 20;
/** Seconds a schema may take to compile on serve before the request is refused. */
export const DEFAULT_CONSTRAINT_TIMEOUT = 30;
/** Worker threads serve compiles and masks constraints in (each holds the tokenizer and XGrammar's tables). */
export const DEFAULT_CONSTRAINT_WORKERS = 2;

const GEN_HELP = GENERATION_FLAGS.map((k) => `  ${(k + '=').padEnd(22)}${KIND_TEXT[FLAG_KINDS[k]]}`).join('\n');

const MODEL_OPTIONS_HELP = `  --dtype auto|f32|f16|bf16
                         weight dtype on the GPU (default auto: the checkpoint's)
  --quantize q8|q4       quantize the linear layers while loading (q8: int8, q4: int4,
                         one scale per 32 weights); embeddings and LM head keep --dtype
  --draft MODEL          speculative decoding: a small model sharing MODEL's tokenizer
                         (a folder or Hub id) drafts tokens that MODEL verifies; greedy
                         output is unchanged. --draft ${SELF_Q4} uses MODEL's own weights
                         quantized to q4 (no second download)
  --tool-call-parser ${TOOL_CALL_FORMATS.join('|')}
                         how the model writes tool calls (default: read off its chat
                         template; vLLM's names)`;

export const CHAT_HELP = `Usage: chat [MODEL] [key=value ...] [options]

Chat with a model in the terminal, in-process on WebGPU or through a running \`serve\`.

MODEL is a local model folder or a Hugging Face Hub repo id (org/name, optionally
org/name@revision), downloaded into the Hugging Face cache (HF_HOME, HF_HUB_CACHE,
HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE are honoured). Without MODEL the bundled
story model models/stories260K is used.

Generation flags (Transformers GenerationConfig names; num_assistant_tokens,
num_assistant_tokens_schedule and assistant_confidence_threshold apply with a draft;
prompt_lookup_num_tokens=N drafts up to N tokens copied from earlier in the conversation,
and cannot be combined with a draft model):
${GEN_HELP}
  draft=                 ${DRAFT_TEXT} (as --draft)

Options:
  --system TEXT          system prompt
  --tools FILE.json      tools the model may call (OpenAI's list of {type: "function",
                         function: {name, description, parameters}}); its calls are
                         shown, and !tool TEXT answers the pending one
${MODEL_OPTIONS_HELP}
  --max-context N        tokens of KV cache to allocate
  --prompt TEXT          the prompt for a non-interactive run (with --json, or instead of stdin)
  --json                 non-interactive: one prompt (--prompt or all of stdin), the result as JSON
  --json-schema FILE     replies are JSON valid against the JSON schema in FILE
                         (constrained decoding; !set response_format=json|text|FILE changes it)
  --url URL              use a running \`serve\` (e.g. http://127.0.0.1:8000) instead of loading MODEL
  -h, --help             this help

When stdin is not a terminal, all of stdin is one prompt and only the reply is printed.

In-session commands:
  !help                  list the commands
  !clear                 start a new conversation
  !save [PATH]           save the conversation and settings as JSON
  !load PATH             load a conversation saved with !save
  !set key=value ...     change generation flags (prompt_lookup_num_tokens=10 turns prompt lookup
                         on, =0 off), the draft (draft=MODEL|${SELF_Q4}|${NO_DRAFT}),
                         or the reply format (response_format=json|text|FILE)
  !status                model, dtype, quantization, draft, adapter, context used, last turn's speed
  !system TEXT           set the system prompt (empty to remove it)
  !tool TEXT             the result of the model's pending tool call (with --tools)
  !exit                  leave (also Ctrl-D); Ctrl-C stops the current reply
`;

export const SERVE_HELP = `Usage: serve [MODEL] [options]

An OpenAI-compatible HTTP server: POST /v1/chat/completions (streaming and not),
POST /v1/completions, GET /v1/models, GET /health, and llama-server's POST /tokenize,
/detokenize, /apply-template. MODEL as for \`chat\` (default: the bundled story model);
it is loaded before /health reports ok.

Options:
${MODEL_OPTIONS_HELP}
                         (the draft decodes every chat and text completion; its
                         acceptance goes to the log line of each request)
  --prompt-lookup-num-tokens N
                         prompt lookup for every completion that does not set its own
                         prompt_lookup_num_tokens: drafts of up to N tokens (1..${MAX_NUM_ASSISTANT_TOKENS}) copied
                         from earlier in the prompt or reply; not with --draft
  --max-matching-ngram-size N
                         prompt lookup's longest matched n-gram (1..${MAX_MATCHING_NGRAM_SIZE}, default 2)
  --host HOST            address to bind (default 127.0.0.1)
  --port N               port (default 8000; 0 picks a free one)
  --api-key KEY          require "Authorization: Bearer KEY"
  --max-context N        tokens of KV cache to allocate
  --parallel N           requests decoded together in one batch (continuous batching;
                         default ${DEFAULT_PARALLEL}, at most ${MAX_PARALLEL}); each may use --max-context
                         tokens of KV cache
  --max-queue N          requests that may wait for a place in the batch (default 16)
  --cors-origins LIST    browser origins allowed to call, comma-separated, or '*'
                         (default none: pages on other sites are refused)
  --shutdown-timeout S   on SIGTERM/SIGINT, seconds running requests get to finish
                         (default ${DEFAULT_SHUTDOWN_TIMEOUT}); queued ones get 503 at once
  --constraint-timeout S seconds a response_format or forced tool-call schema may take to
                         compile before the request gets 400 (default ${DEFAULT_CONSTRAINT_TIMEOUT})
  --constraint-workers N worker threads schemas compile and mask in (default ${DEFAULT_CONSTRAINT_WORKERS});
                         a compile goes to one no other request is using
  --no-warmup            skip compiling the kernels of every step size before /health
                         says ready (they then compile on first use, stalling that step)
  -h, --help             this help
`;

function intOption(name: string, raw: string | undefined, min: number): number {
  if (raw === undefined) throw new UsageError(`${name} needs a value`);
  const v = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(v) || v < min) throw new UsageError(`${name} expects an integer >= ${min}, got '${raw}'`);
  return v;
}

function dtypeOption(raw: string | undefined): Dtype {
  if (!DTYPES.includes(raw as Dtype)) throw new UsageError(`--dtype expects one of ${DTYPES.join(', ')}, got '${raw ?? ''}'`);
  return raw as Dtype;
}

function quantizeOption(raw: string | undefined): Quantize {
  if (!QUANTIZE.includes(raw as Quantize)) throw new UsageError(`--quantize expects one of ${QUANTIZE.join(', ')}, got '${raw ?? ''}'`);
  return raw as Quantize;
}

function draftOption(raw: string | undefined): string {
  if (!raw || raw === NO_DRAFT) throw new UsageError(`--draft expects ${DRAFT_TEXT.replace(`, or ${NO_DRAFT}`, '')}, got '${raw ?? ''}'`);
  return raw;
}

function urlOption(raw: string | undefined): string {
  if (raw === undefined) throw new UsageError('--url needs a value');
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`--url expects an http(s) URL such as http://127.0.0.1:8000, got '${raw}'`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`--url expects an http(s) URL, got '${raw}'`);
  return raw.replace(/\/+$/, '');
}

/** Splits `--name=value` into name and value so both spellings work. */
function* tokens(argv: readonly string[]): Generator<[string, () => string | undefined]> {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const m = /^(--[\w-]+)=(.*)$/s.exec(a);
    if (m) {
      yield [m[1]!, () => m[2]];
    } else {
      yield [a, () => (i + 1 < argv.length ? argv[++i] : undefined)];
    }
  }
}

/** The options chat and serve share: how the model is loaded. */
type LoadArgs = Pick<ChatArgs, 'dtype' | 'quantize' | 'draft' | 'maxContext' | 'toolCallParser'>;

/** Applies a model-loading option to `out`; false when `a` is not one. */
function loadOption(a: string, value: () => string | undefined, out: LoadArgs): boolean {
  switch (a) {
    case '--dtype':
      out.dtype = dtypeOption(value());
      return true;
    case '--quantize':
      out.quantize = quantizeOption(value());
      return true;
    case '--draft':
      out.draft = draftOption(value());
      return true;
    case '--max-context':
      out.maxContext = intOption('--max-context', value(), 1);
      return true;
    case '--tool-call-parser': {
      const v = value();
      if (!TOOL_CALL_FORMATS.includes(v as ToolCallFormat)) throw new UsageError(`--tool-call-parser expects one of ${TOOL_CALL_FORMATS.join(', ')}, got '${v ?? ''}'`);
      out.toolCallParser = v as ToolCallFormat;
      return true;
    }
    default:
      return false;
  }
}

/** A text option's value; `allowEmpty` for texts where "" means something (an empty system prompt). */
function textOption(name: string, v: string | undefined, allowEmpty = false): string {
  if (v === undefined || (!allowEmpty && v === '')) throw new UsageError(`${name} needs a value`);
  return v;
}

export function parseChatArgs(argv: readonly string[]): ChatArgs {
  const out: ChatArgs = { generation: {}, dtype: 'auto', json: false, help: false };
  const pairs: string[] = [];
  for (const [a, value] of tokens(argv)) {
    switch (a) {
      case '-h':
      case '--help':
        out.help = true;
        break;
      case '--json':
        out.json = true;
        break;
      case '--system':
        out.system = textOption('--system', value(), true);
        break;
      case '--prompt':
        out.prompt = textOption('--prompt', value(), true);
        break;
      case '--json-schema':
        out.jsonSchema = textOption('--json-schema', value());
        break;
      case '--url':
        out.url = urlOption(value());
        break;
      case '--tools':
        out.toolsFile = textOption('--tools', value());
        break;
      default:
        if (loadOption(a, value, out)) break;
        if (a.startsWith('-')) throw new UsageError(`unknown option '${a}'. Run 'chat --help' for the options.`);
        if (/^[A-Za-z_]\w*=/.test(a)) pairs.push(a);
        else if (out.model === undefined) out.model = a;
        else throw new UsageError(`unexpected argument '${a}': MODEL is already '${out.model}' (generation flags are key=value)`);
    }
  }
  const { draft, rest } = takeDraftPairs(pairs);
  if (draft !== undefined && draft !== NO_DRAFT) out.draft = draft;
  else if (draft === NO_DRAFT) delete out.draft;
  out.generation = parseGenerationFlags(rest);
  checkOneDrafter(out.draft, out.generation.prompt_lookup_num_tokens);
  return out;
}

/** --cors-origins: '*' or origins as browsers send them (scheme://host[:port], no path). */
function corsOrigins(raw: string | undefined): string[] {
  const list = textOption('--cors-origins', raw)
    .split(',')
    .map((o) => o.trim())
    .filter((o) => o !== '');
  for (const o of list) {
    if (o !== '*' && !/^[a-z][a-z0-9+.-]*:\/\/[^/\s]+$/i.test(o)) throw new UsageError(`--cors-origins: '${o}' is not an origin like https://example.com or http://localhost:5173 (or '*')`);
  }
  return list;
}

export function parseServeArgs(argv: readonly string[]): ServeArgs {
  const out: ServeArgs = { dtype: 'auto', host: '127.0.0.1', port: 8000, parallel: DEFAULT_PARALLEL, maxQueue: 16, corsOrigins: [], shutdownTimeout: DEFAULT_SHUTDOWN_TIMEOUT, constraintTimeout: DEFAULT_CONSTRAINT_TIMEOUT, constraintWorkers: DEFAULT_CONSTRAINT_WORKERS, warmup: true, help: false };
  for (const [a, value] of tokens(argv)) {
    switch (a) {
      case '-h':
      case '--help':
        out.help = true;
        break;
      case '--host':
        out.host = textOption('--host', value());
        break;
      case '--port': {
        const v = intOption('--port', value(), 0);
        if (v > 65535) throw new UsageError(`--port expects 0..65535, got ${v}`);
        out.port = v;
        break;
      }
      case '--api-key':
        out.apiKey = textOption('--api-key', value());
        break;
      case '--max-queue':
        out.maxQueue = intOption('--max-queue', value(), 0);
        break;
      case '--parallel':
        out.parallel = intOption('--parallel', value(), 1);
        if (out.parallel > MAX_PARALLEL) throw new UsageError(`--parallel expects 1..${MAX_PARALLEL}, got ${out.parallel}`);
        break;
      case '--cors-origins':
        out.corsOrigins = corsOrigins(value());
        break;
      case '--shutdown-timeout':
        out.shutdownTimeout = intOption('--shutdown-timeout', value(), 0);
        break;
      case '--constraint-timeout':
        out.constraintTimeout = intOption('--constraint-timeout', value(), 1);
        break;
      case '--constraint-workers':
        out.constraintWorkers = intOption('--constraint-workers', value(), 1);
        break;
      case '--no-warmup':
        out.warmup = false;
        break;
      case '--prompt-lookup-num-tokens': {
        const v = intOption(a, value(), 1);
        if (v > MAX_NUM_ASSISTANT_TOKENS) throw new UsageError(`${a} expects 1..${MAX_NUM_ASSISTANT_TOKENS}, got ${v}`);
        out.lookup = { ...out.lookup, prompt_lookup_num_tokens: v };
        break;
      }
      case '--max-matching-ngram-size': {
        const v = intOption(a, value(), 1);
        if (v > MAX_MATCHING_NGRAM_SIZE) throw new UsageError(`${a} expects 1..${MAX_MATCHING_NGRAM_SIZE}, got ${v}`);
        out.lookup = { ...out.lookup, max_matching_ngram_size: v };
        break;
      }
      default:
        if (loadOption(a, value, out)) break;
        if (a.startsWith('-')) throw new UsageError(`unknown option '${a}'. Run 'serve --help' for the options.`);
        if (out.model === undefined) out.model = a;
        else throw new UsageError(`unexpected argument '${a}': MODEL is already '${out.model}'`);
    }
  }
  if (out.lookup && out.lookup.prompt_lookup_num_tokens === undefined) throw new UsageError('--max-matching-ngram-size needs --prompt-lookup-num-tokens');
  if (out.draft !== undefined && out.lookup) throw new UsageError('--draft and --prompt-lookup-num-tokens cannot both be on: prompt lookup drafts from the text itself, without a draft model');
  return out;
}
