// OpenAI's response_format on chat completions: "text" (no constraint), "json_object" (any
// JSON object) and "json_schema" (a JSON value valid against the schema), enforced token by
// token by the chat layer's constrained decoding. A schema the engine cannot enforce is a
// 400 naming the keyword, never a reply that ignored it.

import { checkSchema, compileConstraint, ConstraintError, type CompiledConstraint, type ConstraintSpec, type TextGenerationPipeline } from '@webgpu-chat/chat';
import { invalid, type ApiError } from './http.ts';

const PARAM = 'response_format';
const TYPES = ['text', 'json_object', 'json_schema'];
const JSON_SCHEMA_FIELDS = new Set(['name', 'description', 'schema', 'strict']);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function refused(e: ConstraintError, param: string): ApiError {
  return invalid(e.message, param, e.keyword ? 'unsupported_schema_keyword' : 'invalid_schema');
}

/** The constraint a response_format asks for (undefined: plain text), validated; the schema's keywords checked. */
export function parseResponseFormat(value: unknown): ConstraintSpec | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) throw invalid(`'${PARAM}' must be an object such as {"type": "json_object"}`, PARAM);
  const { type } = value;
  if (typeof type !== 'string' || !TYPES.includes(type)) throw invalid(`'${PARAM}.type' must be one of ${TYPES.join(', ')}, got ${JSON.stringify(type)}`, `${PARAM}.type`);
  const extra = Object.keys(value).find((k) => k !== 'type' && !(k === 'json_schema' && type === 'json_schema'));
  if (extra !== undefined) throw invalid(`'${PARAM}' of type ${type} has an unknown field '${extra}'`, `${PARAM}.${extra}`, 'unknown_parameter');
  if (type === 'text') return undefined;
  if (type === 'json_object') return { schema: true };
  const js = value.json_schema;
  const at = `${PARAM}.json_schema`;
  if (!isObject(js)) throw invalid(`'${at}' must be an object {name, schema, strict}`, at);
  for (const k of Object.keys(js)) if (!JSON_SCHEMA_FIELDS.has(k)) throw invalid(`'${at}' has an unknown field '${k}'`, `${at}.${k}`, 'unknown_parameter');
  if (typeof js.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) throw invalid(`'${at}.name' must be 1-64 letters, digits, underscores or dashes`, `${at}.name`);
  if (js.strict !== undefined && js.strict !== null && typeof js.strict !== 'boolean') throw invalid(`'${at}.strict' must be a boolean`, `${at}.strict`);
  if (js.description !== undefined && js.description !== null && typeof js.description !== 'string') throw invalid(`'${at}.description' must be a string`, `${at}.description`);
  // Output is held to the schema whether or not `strict` is set: it is always enforced here.
  if (js.schema === undefined || js.schema === null) throw invalid(`'${at}.schema' is required: the JSON schema the reply must follow`, `${at}.schema`);
  if (!isObject(js.schema)) throw invalid(`'${at}.schema' must be a JSON schema object`, `${at}.schema`);
  try {
    checkSchema(js.schema);
  } catch (e) {
    if (e instanceof ConstraintError) throw refused(e, `${at}.schema`);
    throw e;
  }
  return { schema: js.schema };
}

/** Compiles a constraint for the served model; errors naming a limit (ApiError) carry `param`. */
export type ConstraintCompiler = (spec: ConstraintSpec, param: string) => Promise<CompiledConstraint>;

/** The engine on the caller's thread (serve runs it in a worker: constraint-thread.ts). */
export const inThreadCompiler =
  (pipe: TextGenerationPipeline): ConstraintCompiler =>
  (spec) =>
    compileConstraint(spec, pipe.tokenizer, pipe.model.info.vocabSize);

/** Compiles a request's constraint (a ConstraintError becomes a 400 naming `param`). */
export async function compileRequestConstraint(spec: ConstraintSpec, compile: ConstraintCompiler, param: string): Promise<CompiledConstraint> {
  try {
    return await compile(spec, param);
  } catch (e) {
    if (e instanceof ConstraintError) throw refused(e, param);
    throw e;
  }
}
