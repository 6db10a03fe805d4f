// XGrammar (@mlc-ai/web-xgrammar: the C++ engine compiled to WebAssembly, as WebLLM uses it)
// loaded the same way under Node, Deno and the browser, and the per-tokenizer objects it
// needs: the vocabulary as the tokenizer writes it, its decoding type, and a compiler.

import type { ChatTokenizer } from '../tokenizer.ts';
import { utf8Table, type Utf8Table } from './utf8.ts';

/** The parts of the package this module uses (its own typings declare handles as `any`). */
export interface XgrammarTokenizerInfo {
  dispose(): void;
}
export interface XgrammarCompiledGrammar {
  dispose(): void;
}
export interface XgrammarCompiler {
  compileGrammar(ebnf: string, rootRule?: string): Promise<XgrammarCompiledGrammar>;
  dispose(): void;
}
export interface XgrammarMatcher {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  dispose(): void;
}
interface XgrammarModule {
  TokenizerInfo: {
    createTokenizerInfo(vocab: string[], vocabType: string, prependSpace: boolean, vocabSize: number, stopTokenIds: number[]): Promise<XgrammarTokenizerInfo>;
  };
  GrammarCompiler: { createGrammarCompiler(info: XgrammarTokenizerInfo, cacheEnabled?: boolean): Promise<XgrammarCompiler> };
  /** JSON schema to EBNF text (exported for tests; the text is what compileJSONSchema compiles). */
  Testings: { _jsonSchemaToEBNF(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean, maxWhitespaceCnt?: number): Promise<string> };
  GrammarMatcher: { createGrammarMatcher(grammar: XgrammarCompiledGrammar, stopTokens?: number[], terminateWithoutStopToken?: boolean): Promise<XgrammarMatcher> };
}

let loading: Promise<XgrammarModule> | undefined;

/** The package, loaded once. */
export function loadXgrammar(): Promise<XgrammarModule> {
  return (loading ??= load());
}

async function load(): Promise<XgrammarModule> {
  const g = globalThis as { document?: unknown; location?: unknown; process?: { versions?: { node?: string } }; Deno?: unknown };
  const server = g.document === undefined && g.location === undefined && (g.process?.versions?.node !== undefined || g.Deno !== undefined);
  if (!server) {
    // Browsers and workers: a bundler turns the UMD bundle into a module, or it sets globalThis.xgrammar.
    const ns = (await import('@mlc-ai/web-xgrammar')) as unknown as Partial<XgrammarModule> & { default?: XgrammarModule };
    const mod = ns.GrammarCompiler ? (ns as XgrammarModule) : (ns.default ?? (globalThis as { xgrammar?: XgrammarModule }).xgrammar);
    if (!mod?.GrammarCompiler) throw new Error('@mlc-ai/web-xgrammar loaded without its exports');
    return mod;
  }
  // Node and Deno: the package is a UMD bundle in a "type": "module" package, and its
  // emscripten loader calls require('url') there, which an ES module has no access to.
  // It is evaluated as the CommonJS script it is. Without `process` it skips its Node
  // branch (file reads through a dynamic import, which a vm context such as vitest's lacks)
  // and decodes its WebAssembly from the data URI it carries, as in a browser.
  const { createRequire } = await import('node:module');
  const { readFileSync } = await import('node:fs');
  const { dirname } = await import('node:path');
  const require = createRequire(import.meta.url);
  const file = require.resolve('@mlc-ai/web-xgrammar');
  const module = { exports: {} as XgrammarModule };
  const script = new Function('exports', 'module', 'require', '__filename', '__dirname', 'process', readFileSync(file, 'utf8'));
  script(module.exports, module, require, file, dirname(file), undefined);
  return module.exports;
}

/** How a tokenizer's vocabulary entries map to bytes (XGrammar's VocabType). */
export type VocabType = 'byte_level' | 'byte_fallback' | 'raw';

/**
 * The vocabulary type and space policy, read from tokenizer.json as XGrammar's own
 * `TokenizerInfo.from_huggingface` does: a ByteLevel decoder means GPT-2 byte characters
 * ('Ġ' for a space), a ByteFallback decoder means SentencePiece pieces ('▁', '<0x0A>').
 */
export function vocabTypeOf(tokenizerJson: Record<string, unknown>): { type: VocabType; prependSpace: boolean } {
  const decoders = (d: unknown): { type?: string }[] => {
    if (!d || typeof d !== 'object') return [];
    const x = d as { type?: string; decoders?: unknown[] };
    return x.type === 'Sequence' && Array.isArray(x.decoders) ? x.decoders.flatMap(decoders) : [x];
  };
  const types = decoders(tokenizerJson.decoder).map((d) => d.type);
  if (types.includes('ByteLevel')) return { type: 'byte_level', prependSpace: false };
  if (types.includes('ByteFallback')) {
    // SentencePiece adds '▁' before the text (a Prepend normalizer or a Metaspace pre-tokenizer).
    const json = JSON.stringify([tokenizerJson.normalizer ?? null, tokenizerJson.pre_tokenizer ?? null]);
    const prependSpace = /"Prepend"/.test(json) || (/"Metaspace"/.test(json) && !/"prepend_scheme":"never"/.test(json));
    return { type: 'byte_fallback', prependSpace };
  }
  return { type: 'raw', prependSpace: false };
}

/**
 * The vocabulary, `vocabSize` entries long (the model's logits row, which may be padded past
 * the tokenizer's ids). Special tokens and padding are written as empty strings, which
 * XGrammar never allows inside the grammar: a chat marker is not JSON text.
 */
export function encodedVocab(tokenizer: ChatTokenizer, vocabSize: number): string[] {
  const out = new Array<string>(vocabSize);
  for (let id = 0; id < vocabSize; id++) out[id] = tokenizer.specialIds.has(id) ? '' : (tokenizer.idToToken(id) ?? '');
  return out;
}

/** What constraints over one vocabulary share: XGrammar's compiler (it caches compiled schemas) and the UTF-8 table. */
export interface VocabularyEngine {
  compiler: XgrammarCompiler;
  utf8: Utf8Table;
}

const engines = new WeakMap<ChatTokenizer, Map<number, Promise<VocabularyEngine>>>();

/** The engine for a tokenizer and logits width, built once and kept for the tokenizer's life. */
export function engineFor(tokenizer: ChatTokenizer, vocabSize: number): Promise<VocabularyEngine> {
  let byWidth = engines.get(tokenizer);
  if (!byWidth) engines.set(tokenizer, (byWidth = new Map()));
  let e = byWidth.get(vocabSize);
  if (!e) {
    e = (async () => {
      const xgr = await loadXgrammar();
      const { type, prependSpace } = vocabTypeOf(tokenizer.tokenizerJson);
      const vocab = encodedVocab(tokenizer, vocabSize);
      // Stop tokens are given per matcher (each request's EOS set).
      const info = await xgr.TokenizerInfo.createTokenizerInfo(vocab, type, prependSpace, vocabSize, []);
      return { compiler: await xgr.GrammarCompiler.createGrammarCompiler(info, true), utf8: utf8Table(type, vocab) };
    })();
    e.catch(() => byWidth.delete(vocabSize));
    byWidth.set(vocabSize, e);
  }
  return e;
}
