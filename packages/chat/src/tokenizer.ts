// The model folder's tokenizer: tokenizer.json (the pipeline: normalizer, pre-tokenizer,
// BPE model, post-processor, decoder) run by @huggingface/tokenizers, with the pipeline
// Transformers 5 builds for Llama- and Gemma-class tokenizers (tokenizer-classes.ts), plus the
// special tokens and BOS/EOS policy of tokenizer_config.json.

import { Tokenizer } from '@huggingface/tokenizers';
import type { FileSource } from '@webgpu-chat/engine';
import { TokenizerLoadError } from './errors.ts';
import { transformersPipeline } from './tokenizer-classes.ts';

/** The fields of tokenizer_config.json the chat layer reads; the rest is kept as given. */
export interface TokenizerConfig {
  bos_token?: SpecialTokenValue;
  eos_token?: SpecialTokenValue;
  pad_token?: SpecialTokenValue;
  unk_token?: SpecialTokenValue;
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  chat_template?: string | { name: string; template: string }[];
  model_max_length?: number;
  [key: string]: unknown;
}

/** A special token as tokenizer_config.json writes it: a string, an AddedToken object, or null. */
export type SpecialTokenValue = string | { content: string } | null;

export interface EncodeOptions {
  /** Add the BOS/EOS the tokenizer's post-processor or add_bos_token/add_eos_token ask for (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, <|im_start|>, ...) from the text (default false). */
  skipSpecialTokens?: boolean;
}

export interface SpecialToken {
  content: string;
  id: number;
}

function specialTokenContent(value: unknown, field: string): string | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  throw new TokenizerLoadError(`tokenizer_config.json: ${field} must be a string, {content: string} or null, got ${JSON.stringify(value)}`);
}

function parseJson(text: string, file: string, where: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new TokenizerLoadError(`${where}/${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TokenizerLoadError(`${where}/${file} must hold a JSON object`);
  }
  return value as Record<string, unknown>;
}

export class ChatTokenizer {
  readonly bos: SpecialToken | undefined;
  readonly eos: SpecialToken | undefined;
  readonly pad: SpecialToken | undefined;
  readonly unk: SpecialToken | undefined;
  /** Ids of every token marked special (skipped by decode with skipSpecialTokens). */
  readonly specialIds: ReadonlySet<number>;
  private readonly inner: Tokenizer;
  private readonly cleanUpSpaces: boolean;
  private vocabSizeCache: number | undefined;
  private maxTokenBytesCache: number | undefined;

  /** Builds a tokenizer from the parsed tokenizer.json and tokenizer_config.json objects. */
  constructor(
    readonly tokenizerJson: Record<string, unknown>,
    readonly config: TokenizerConfig,
  ) {
    const model = tokenizerJson.model as { type?: unknown } | undefined;
    if (!model || typeof model !== 'object') throw new TokenizerLoadError('tokenizer.json has no "model" section');
    try {
      this.inner = new Tokenizer(transformersPipeline(tokenizerJson, config), config);
    } catch (e) {
      throw new TokenizerLoadError(`tokenizer.json could not be loaded: ${(e as Error).message}`);
    }
    const find = (field: 'bos_token' | 'eos_token' | 'pad_token' | 'unk_token'): SpecialToken | undefined => {
      const content = specialTokenContent(config[field], field);
      if (content === undefined) return undefined;
      const id = this.inner.token_to_id(content);
      if (id === undefined) throw new TokenizerLoadError(`tokenizer_config.json: ${field} ${JSON.stringify(content)} is not in the vocabulary`);
      return { content, id };
    };
    this.bos = find('bos_token');
    this.eos = find('eos_token');
    this.pad = find('pad_token');
    this.unk = find('unk_token');
    const special = new Set<number>();
    for (const [id, tok] of this.inner.get_added_tokens_decoder()) if (tok.special) special.add(id);
    for (const t of [this.bos, this.eos, this.pad, this.unk]) if (t) special.add(t.id);
    this.specialIds = special;
    // Transformers 5 applies clean_up_tokenization_spaces only to WordPiece tokenizers: on
    // BPE it deletes real spaces before punctuation ("Hi , there" -> "Hi, there").
    this.cleanUpSpaces = model.type === 'WordPiece' && config.clean_up_tokenization_spaces === true;
  }

  /** Loads tokenizer.json and tokenizer_config.json (optional) from a model folder. */
  static async load(source: FileSource): Promise<ChatTokenizer> {
    const json = await source.text('tokenizer.json');
    if (json === undefined) {
      throw new TokenizerLoadError(`${source.name} has no tokenizer.json (only tokenizers in the Hugging Face tokenizers format are supported)`);
    }
    const cfg = await source.text('tokenizer_config.json');
    return new ChatTokenizer(parseJson(json, 'tokenizer.json', source.name), cfg === undefined ? {} : (parseJson(cfg, 'tokenizer_config.json', source.name) as TokenizerConfig));
  }

  /** One more than the largest token id (model vocabularies may be padded beyond it). */
  get vocabSize(): number {
    if (this.vocabSizeCache === undefined) {
      let max = -1;
      for (const id of this.inner.get_vocab(true).values()) if (id > max) max = id;
      this.vocabSizeCache = max + 1;
    }
    return this.vocabSizeCache;
  }

  /**
   * A lower bound on encode(text).length from the text's length alone, so that a prompt far
   * beyond any context is refused without tokenizing it (megabytes take seconds to minutes).
   * No token spans more UTF-16 units than its vocabulary entry has UTF-8 bytes (byte-level
   * BPE: one entry character per byte; SentencePiece: '▁' is three bytes for one space);
   * the factor 2 leaves room for a normalizer that composes characters.
   */
  minTokens(text: string): number {
    if (this.maxTokenBytesCache === undefined) {
      const encoder = new TextEncoder();
      let max = 1;
      for (const token of this.inner.get_vocab(true).keys()) max = Math.max(max, encoder.encode(token).length);
      this.maxTokenBytesCache = max;
    }
    return Math.floor(text.length / (2 * this.maxTokenBytesCache));
  }

  /**
   * Text to token ids. With addSpecialTokens, add_bos_token/add_eos_token from
   * tokenizer_config.json decide when present (as Transformers' Llama tokenizers do),
   * otherwise tokenizer.json's post-processor. A BOS the text already starts with
   * (one a chat template wrote) is not doubled: unlike Transformers, which would.
   */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode expects a string, got ${typeof text}`);
    const addSpecial = opts.addSpecialTokens ?? true;
    const { add_bos_token: addBos, add_eos_token: addEos } = this.config;
    const explicit = typeof addBos === 'boolean' || typeof addEos === 'boolean';
    if (!addSpecial || explicit) {
      const ids = this.inner.encode(text, { add_special_tokens: false }).ids;
      if (!addSpecial) return ids;
      if (addBos === true && this.bos && ids[0] !== this.bos.id) ids.unshift(this.bos.id);
      if (addEos === true && this.eos) ids.push(this.eos.id);
      return ids;
    }
    const ids = this.inner.encode(text, { add_special_tokens: true }).ids;
    if (this.bos && ids.length >= 2 && ids[0] === this.bos.id && ids[1] === this.bos.id && text.startsWith(this.bos.content)) ids.shift();
    return ids;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    return this.inner.decode(Array.from(ids), {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: this.cleanUpSpaces,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.inner.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.inner.id_to_token(id);
  }
}
