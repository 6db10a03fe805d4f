// Run by deno.test.ts under Deno (and Node): constrained decoding's engine (XGrammar in
// WebAssembly) loads and masks there too; prints the greedy walk of constraint-walk.ts.
import { compileConstraint } from '@webgpu-chat/chat';
import { printConstrainedWalk } from './constraint-walk.ts';

await printConstrainedWalk((spec, tokenizer) => compileConstraint(spec, tokenizer, tokenizer.vocabSize));
