// Named errors of the chat layer: each message says what was wrong and what to do.

/** A model folder's tokenizer files are missing or malformed. */
export class TokenizerLoadError extends Error {
  override name = 'TokenizerLoadError';
}

/** A chat template is missing, fails to parse, or raised while rendering. */
export class TemplateError extends Error {
  override name = 'TemplateError';
}

/** Tools were offered to a model whose chat template does not write them into the prompt. */
export class ToolsUnsupportedError extends TemplateError {
  override name = 'ToolsUnsupportedError';
}

/** The messages (or prompt) handed to the chat layer are malformed. */
export class ChatInputError extends Error {
  override name = 'ChatInputError';
}

/** A generation flag is out of range (temperature < 0, top_p outside (0, 1], ...). */
export class GenerationConfigError extends Error {
  override name = 'GenerationConfigError';
}

/** The prompt does not fit the session's context. */
export class ContextLengthError extends Error {
  override name = 'ContextLengthError';
  constructor(
    readonly promptTokens: number,
    readonly maxContext: number,
    /** promptTokens is a lower bound from the text's length: the text was too long to tokenize. */
    readonly atLeast = false,
  ) {
    super(
      `The prompt is ${atLeast ? 'at least ' : ''}${promptTokens} tokens but the context holds ${maxContext}: ` +
        `shorten the conversation or load the model with a larger maxContext.`,
    );
  }
}

/** A JSON schema (or constraint) that is invalid, or uses a keyword the grammar engine cannot enforce. */
export class ConstraintError extends Error {
  override name = 'ConstraintError';
  constructor(
    message: string,
    /** The offending keyword, when one is to blame. */
    readonly keyword?: string,
    /** JSON pointer of the schema location ('' for the root). */
    readonly pointer = '',
  ) {
    super(message);
  }
}
