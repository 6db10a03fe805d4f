// Transformers 5 does not run a SentencePiece-style BPE tokenizer.json as written: the tokenizer
// class named by tokenizer_config.json builds its own normalizer, pre-tokenizer and decoder
// around the file's vocabulary and merges (models/llama/tokenization_llama.py,
// models/gemma/tokenization_gemma.py). For Llama that is a Metaspace pre-tokenizer and no
// normalizer, where the files carry the older Prepend("▁") + Replace(" ", "▁") normalizer: the two
// differ on text starting with a space (" leading space" is [1, 5374, 2764] in Transformers and
// [1, 28705, 5374, 2764] as written, with Mistral's vocabulary). This module gives the
// tokenizer.json Transformers effectively runs, for the classes our model families use; other
// classes' files are used as written.

type Json = Record<string, unknown>;

const REPLACE_SPACE = { type: 'Replace', pattern: { String: '▁' }, content: ' ' };

/** LlamaTokenizer's pipeline: no normalizer, Metaspace (prepend per add_prefix_space and legacy), no split. */
function llamaPipeline(config: Json): Json {
  const addPrefixSpace = config.add_prefix_space !== false;
  // transformers' _get_prepend_scheme: "always" for legacy tokenizers, "first" otherwise.
  const scheme = addPrefixSpace ? (config.legacy === true ? 'always' : 'first') : 'never';
  return {
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: scheme, split: false },
    decoder: {
      type: 'Sequence',
      decoders: [REPLACE_SPACE, { type: 'ByteFallback' }, { type: 'Fuse' }, ...(addPrefixSpace ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : [])],
    },
  };
}

/** GemmaTokenizer's pipeline: spaces replaced by "▁", split after each space, no prefix space. */
function gemmaPipeline(): Json {
  return {
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
    pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
    decoder: { type: 'Sequence', decoders: [REPLACE_SPACE, { type: 'ByteFallback' }, { type: 'Fuse' }] },
  };
}

const CLASSES: Record<string, (config: Json) => Json> = {
  LlamaTokenizer: llamaPipeline,
  LlamaTokenizerFast: llamaPipeline,
  GemmaTokenizer: gemmaPipeline,
  GemmaTokenizerFast: gemmaPipeline,
};

/** tokenizer.json with the pipeline Transformers 5 builds for tokenizer_config.json's tokenizer_class (a BPE model's only). */
export function transformersPipeline(tokenizerJson: Json, config: Json): Json {
  const cls = typeof config.tokenizer_class === 'string' ? CLASSES[config.tokenizer_class] : undefined;
  const model = tokenizerJson.model as Json | undefined;
  if (!cls || model?.type !== 'BPE') return tokenizerJson;
  return { ...tokenizerJson, ...cls(config) };
}
