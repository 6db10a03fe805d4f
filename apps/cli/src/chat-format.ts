// `chat`'s structured output: --json-schema FILE and `!set response_format=json|text|FILE`,
// turned into the pipeline's (and serve's) response_format. A schema the engine cannot
// enforce is refused here, naming the keyword, before any reply is generated.

import { readFile } from 'node:fs/promises';
import { checkSchema, ConstraintError, type ResponseFormat } from '@webgpu-chat/chat';
import { UsageError } from './args.ts';

/** The response_format of a JSON schema file (its keywords checked). */
export async function schemaFileFormat(path: string): Promise<ResponseFormat> {
  let schema: unknown;
  try {
    schema = JSON.parse(await readFile(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`cannot read the JSON schema ${path}: ${(e as Error).message}`);
  }
  try {
    checkSchema(schema);
  } catch (e) {
    if (e instanceof ConstraintError) throw new UsageError(`${path}: ${e.message}`);
    throw e;
  }
  if (typeof schema !== 'object' || schema === null) throw new UsageError(`${path} must hold a JSON schema object`);
  return { type: 'json_schema', json_schema: { name: 'schema', schema: schema as Record<string, unknown>, strict: true } };
}

/** `response_format=` values: json (any JSON object), text (none), or a JSON schema file. */
export async function parseResponseFormatSetting(value: string): Promise<ResponseFormat | undefined> {
  if (value === 'json') return { type: 'json_object' };
  if (value === 'text') return undefined;
  if (value === '') throw new UsageError('response_format needs a value: json, text, or a JSON schema file');
  return schemaFileFormat(value);
}

/** How !status and !set show the setting. */
export function formatResponseFormat(rf: ResponseFormat | undefined): string {
  if (!rf || rf.type === 'text') return 'text';
  return rf.type === 'json_object' ? 'json (any JSON object)' : 'JSON schema';
}

/** Splits `response_format=` pairs (a session setting) from generation flags; the last one wins. */
export function takeResponseFormatPair(pairs: readonly string[]): { value?: string; rest: string[] } {
  let value: string | undefined;
  const rest: string[] = [];
  for (const p of pairs) {
    if (p.startsWith('response_format=')) value = p.slice('response_format='.length);
    else rest.push(p);
  }
  return value === undefined ? { rest } : { value, rest };
}
