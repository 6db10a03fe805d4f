// Run by deno.test.ts under Deno: serve's constraint worker (constraint-thread.ts) starts
// there and masks as the in-thread engine does; the same greedy walk, through the worker.
import { ConstraintThread } from '../src/constraint-thread.ts';
import { printConstrainedWalk } from './constraint-walk.ts';

let thread: ConstraintThread | undefined;
await printConstrainedWalk((spec, tokenizer) => {
  thread = new ConstraintThread(tokenizer, tokenizer.vocabSize, { compileTimeoutMs: 60_000, maxPending: 1, maxWorkers: 1 });
  return thread.compile(spec, 'response_format');
});
thread?.close();
