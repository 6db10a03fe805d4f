// The typed messages between the page (main.ts) and the engine's worker (worker.ts).
// One operation runs at a time; every reply names the operation it belongs to.

import type { GenerationConfig, GenerationStats, Message, ParsedToolCall, ResponseFormat } from '@webgpu-chat/chat';
import type { DeviceInfo, DtypeOption, LoadProgress } from '@webgpu-chat/engine';

/** Load-time quantization of the linear layers (LoadOptions.quantize). */
export type Quantize = 'q8' | 'q4';

/** The draft for speculative decoding: 'self-q4' is the model's own folder loaded again with q4 weights. */
export type DraftOption = 'self-q4';

/** Where a model folder comes from. Picked files travel as Blobs keyed by folder-relative path. */
export type ModelSpec =
  | { kind: 'hub'; repo: string; endpoint: string; revision: string }
  /** A folder URL (the bundled model is one, on the page's own server); `name` shows instead of the URL. */
  | { kind: 'url'; url: string; name?: string }
  | { kind: 'files'; name: string; files: { path: string; blob: Blob }[] };

export interface CacheEntry {
  /** The model folder's URL (a Hub resolve URL or a folder URL). */
  folder: string;
  files: { name: string; bytes: number }[];
}

export type Request =
  | { type: 'gpu' }
  | { type: 'load'; model: ModelSpec; dtype: DtypeOption; maxContext: number; useCache: boolean; quantize?: Quantize; draft?: DraftOption }
  /** `id` names the reply in every Reply it causes; the page ignores replies of a reply it has dropped. */
  /** `tools`: OpenAI's list, rendered by the chat template, the reply's calls parsed; `responseFormat`: JSON mode. */
  | { type: 'generate'; id: number; messages: Message[]; config: GenerationConfig; tools?: unknown[]; responseFormat?: ResponseFormat }
  | { type: 'stop'; id: number }
  | { type: 'cache-list' }
  | { type: 'cache-clear' };

export interface GpuSummary {
  info: DeviceInfo;
  hasF16: boolean;
  description: string;
}

export interface LoadedModel {
  name: string;
  modelType: string;
  dtype: string;
  weightBytes: number;
  /** e.g. "q4 (4-bit, group 32)" when the linear layers are quantized. */
  quantization?: string;
  /** Set when replies are decoded speculatively with this draft; its weights' bytes. */
  draft?: { name: DraftOption; weightBytes: number };
  maxContext: number;
  /** False for base/story models: chats are fed as plain concatenated text. */
  hasChatTemplate: boolean;
}

/** Where a file's bytes came from during a load. */
export interface FileRead {
  file: string;
  bytes: number;
  fromCache: boolean;
}

/**
 * Why a reply ended, finer than the loop's finish reason: 'stop' splits into an EOS token and
 * a stop string, 'length' into max_new_tokens and the context running out.
 */
export type StopReason = 'eos' | 'stop-string' | 'max-new-tokens' | 'context-full' | 'stopped';

export type Reply =
  | { type: 'gpu'; gpu: GpuSummary }
  | { type: 'progress'; progress: LoadProgress }
  | { type: 'file'; read: FileRead }
  /** The weights are on the GPU; the kernels are compiled by a one-token warm-up reply next. */
  | { type: 'compiling' }
  | { type: 'loaded'; model: LoadedModel; files: FileRead[]; cacheError?: string }
  /** `delta`: the reply's text (its content, where reasoning and tool calls are split out). */
  | { type: 'token'; id: number; delta: string; tokenId: number | null }
  /** Thinking the model wrote before its answer (<think> blocks, harmony's analysis channel). */
  | { type: 'reasoning'; id: number; delta: string }
  | { type: 'tool-call'; id: number; call: ParsedToolCall }
  | { type: 'done'; id: number; stats: GenerationStats; stopReason: StopReason }
  | { type: 'cache'; entries: CacheEntry[] }
  /** `id`: the reply that failed (op 'generate'); `kept`: after a failed load, the model still in use. */
  | { type: 'error'; op: Request['type']; name: string; message: string; id?: number; kept?: string };

/** The Hub's resolve URL for a repository's files at a revision. */
export function hubFolderUrl(endpoint: string, repo: string, revision = 'main'): string {
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo)) throw new Error(`'${repo}' is not a Hub repository id: expected 'owner/name'`);
  return `${endpoint.replace(/\/+$/, '')}/${repo}/resolve/${encodeURIComponent(revision)}`;
}
