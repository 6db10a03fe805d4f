// Chat templates: the Jinja program a model ships (tokenizer_config.json's chat_template,
// or chat_template.jinja) that turns a list of messages into the prompt text, rendered
// with @huggingface/jinja and the variables Transformers' apply_chat_template passes.

import { Template } from '@huggingface/jinja';
import type { FileSource } from '@webgpu-chat/engine';
import { ChatInputError, TemplateError, ToolsUnsupportedError } from './errors.ts';
import type { ChatTokenizer } from './tokenizer.ts';
import { messagesForTemplate, validateTools } from './tools.ts';
import type { Message, Role } from './types.ts';

const ROLES: ReadonlySet<string> = new Set<Role>(['system', 'user', 'assistant', 'tool']);

export interface RenderOptions {
  add_generation_prompt?: boolean;
  continue_final_message?: boolean;
  tools?: unknown[];
  documents?: unknown[];
  /** Extra template variables (Qwen3's enable_thinking, ...). */
  chat_template_kwargs?: Record<string, unknown>;
}

/**
 * The explicit fallback for models without a chat template (base and story models such
 * as stories260K): the message contents concatenated with nothing between them, so a
 * one-message chat is the plain prompt. Roles are dropped. Tokenize the result with
 * special tokens (the BOS such models expect), unlike a template's output.
 */
export const PLAIN_FALLBACK = 'plain';

/** Checks a chat before it reaches a template: known roles and string content. */
export function validateMessages(messages: unknown): asserts messages is Message[] {
  if (!Array.isArray(messages)) throw new ChatInputError(`A chat must be an array of {role, content} messages, got ${typeof messages}`);
  if (messages.length === 0) throw new ChatInputError('A chat needs at least one message');
  messages.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null) throw new ChatInputError(`Message ${i} must be an object with role and content, got ${JSON.stringify(m)}`);
    const { role, content, tool_calls } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw new ChatInputError(`Message ${i} has role ${JSON.stringify(role)}; expected one of ${[...ROLES].join(', ')}`);
    }
    // An assistant turn that only calls tools may have empty content, but it must still be a string.
    if (typeof content !== 'string') {
      throw new ChatInputError(`Message ${i} (${role}) must have string content, got ${content === undefined ? 'none' : typeof content}`);
    }
    if (tool_calls !== undefined && !Array.isArray(tool_calls)) throw new ChatInputError(`Message ${i}: tool_calls must be an array`);
  });
}

/** A chat and a tool to learn whether a template writes tools into the prompt at all. */
const PROBE_CHAT: Message[] = [{ role: 'user', content: 'x' }];
const PROBE_TOOL = { type: 'function', function: { name: 'probe_tool_7f3a', description: 'd', parameters: { type: 'object', properties: {} } } };

export class ChatTemplates {
  private readonly compiled = new Map<string, Template>();
  private readonly writesTools = new Map<string, boolean>();

  /** @param templates named templates ("default", "tool_use", ...); empty when the model has none. */
  constructor(readonly templates: Readonly<Record<string, string>>) {}

  /**
   * The model's templates: chat_template.jinja when the folder has one (Transformers
   * prefers it), else tokenizer_config.json's chat_template (a string, or a list of
   * {name, template}).
   */
  static async load(source: FileSource, config: { chat_template?: unknown }): Promise<ChatTemplates> {
    const jinja = await source.text('chat_template.jinja');
    if (jinja !== undefined) return new ChatTemplates({ default: jinja });
    return ChatTemplates.fromConfig(config);
  }

  static fromConfig(config: { chat_template?: unknown }): ChatTemplates {
    const t = config.chat_template;
    if (t === undefined || t === null) return new ChatTemplates({});
    if (typeof t === 'string') return new ChatTemplates({ default: t });
    if (Array.isArray(t)) {
      const named: Record<string, string> = {};
      for (const entry of t) {
        const { name, template } = (entry ?? {}) as { name?: unknown; template?: unknown };
        if (typeof name !== 'string' || typeof template !== 'string') {
          throw new TemplateError('tokenizer_config.json: chat_template list entries must be {name: string, template: string}');
        }
        named[name] = template;
      }
      return new ChatTemplates(named);
    }
    throw new TemplateError('tokenizer_config.json: chat_template must be a string or a list of {name, template}');
  }

  get isEmpty(): boolean {
    return Object.keys(this.templates).length === 0;
  }

  /** Transformers' choice: "tool_use" when tools are given and the model has one, else "default". */
  select(hasTools: boolean): string {
    if (this.isEmpty) {
      throw new TemplateError(
        'This model has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja). ' +
          "Pass a plain string prompt, give a template, or ask for the plain fallback with templateFallback: 'plain'.",
      );
    }
    if (hasTools && this.templates.tool_use !== undefined) return this.templates.tool_use;
    const chosen = this.templates.default;
    if (chosen === undefined) {
      throw new TemplateError(`This model has named chat templates (${Object.keys(this.templates).join(', ')}) but none called "default"`);
    }
    return chosen;
  }

  private compile(source: string): Template {
    let t = this.compiled.get(source);
    if (!t) {
      try {
        t = new Template(source);
      } catch (e) {
        throw new TemplateError(`The chat template does not parse: ${(e as Error).message}`);
      }
      this.compiled.set(source, t);
    }
    return t;
  }

  /** The prompt text for a chat, as Transformers' apply_chat_template(tokenize=False) gives it. */
  render(messages: Message[], tokenizer: ChatTokenizer, opts: RenderOptions = {}): string {
    validateMessages(messages);
    const cont = opts.continue_final_message ?? false;
    const genPrompt = opts.add_generation_prompt ?? false;
    if (cont && genPrompt) {
      throw new ChatInputError('continue_final_message and add_generation_prompt cannot both be set: one continues the last message, the other opens a new turn');
    }
    if (cont && messages[messages.length - 1]!.role !== 'assistant') {
      throw new ChatInputError('continue_final_message needs a chat whose last message is from the assistant');
    }
    if (opts.tools !== undefined) validateTools(opts.tools);
    const hasTools = Array.isArray(opts.tools) && opts.tools.length > 0;
    const source = this.select(hasTools);
    if (hasTools && !this.rendersTools(source, tokenizer)) {
      throw new ToolsUnsupportedError("This model's chat template does not write tools into the prompt, so it cannot be offered tools");
    }
    const text = this.run(source, tokenizer, { ...opts.chat_template_kwargs, messages: messagesForTemplate(messages), add_generation_prompt: genPrompt, tools: opts.tools, documents: opts.documents });
    return cont ? cutAfterFinalMessage(text, messages[messages.length - 1]!.content) : text;
  }

  /**
   * Whether the template's text changes when a tool is offered (one probe render each way,
   * remembered). A template that can't render the probe is given the benefit of the doubt.
   */
  private rendersTools(source: string, tokenizer: ChatTokenizer): boolean {
    let known = this.writesTools.get(source);
    if (known === undefined) {
      const probe = (tools: unknown[] | undefined) => this.run(source, tokenizer, { messages: PROBE_CHAT, add_generation_prompt: true, tools });
      try {
        known = probe([PROBE_TOOL]) !== probe(undefined);
      } catch {
        known = true;
      }
      this.writesTools.set(source, known);
    }
    return known;
  }

  private run(source: string, tokenizer: ChatTokenizer, vars: { messages: Message[]; add_generation_prompt: boolean; tools?: unknown[] | undefined; documents?: unknown[] | undefined; [k: string]: unknown }): string {
    try {
      return this.compile(source).render({
        ...tokenizerSpecialTokens(tokenizer),
        ...vars,
        // None when not given, exactly as Transformers passes them.
        tools: vars.tools ?? null,
        documents: vars.documents ?? null,
      });
    } catch (e) {
      // Includes the template's own raise_exception('...'), whose message is kept as written.
      throw new TemplateError(`The chat template failed while rendering: ${(e as Error).message}`);
    }
  }
}

/** bos_token, eos_token, ... as template variables (absent ones stay undefined, as in Transformers). */
function tokenizerSpecialTokens(tok: ChatTokenizer): Record<string, string> {
  const out: Record<string, string> = {};
  if (tok.bos) out.bos_token = tok.bos.content;
  if (tok.eos) out.eos_token = tok.eos.content;
  if (tok.pad) out.pad_token = tok.pad.content;
  if (tok.unk) out.unk_token = tok.unk.content;
  return out;
}

/**
 * continue_final_message: drop what the template wrote after the last message's content
 * (its end-of-turn token), so the model continues that message. Transformers' rule,
 * including its care for templates that trim the content.
 */
function cutAfterFinalMessage(rendered: string, final: string): string {
  const stripped = final.trim();
  const at = rendered.lastIndexOf(stripped);
  if (stripped === '' || at < 0) {
    throw new TemplateError('continue_final_message is set but the final message does not appear in the rendered chat, so it cannot be continued');
  }
  const lstripped = final.trimStart();
  if (rendered.slice(at, at + lstripped.length) === final) return rendered.slice(0, at + lstripped.length);
  return rendered.slice(0, at + stripped.length);
}

/** The plain fallback (see PLAIN_FALLBACK). */
export function renderPlain(messages: Message[]): string {
  validateMessages(messages);
  return messages.map((m) => m.content).join('');
}
