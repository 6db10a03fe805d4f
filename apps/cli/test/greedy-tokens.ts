// Prints the token ids of a short greedy generation on the bundled model as JSON, so the
// same script can run under Node and Deno and the outputs be compared (deno.test.ts).
import { pipeline } from '@webgpu-chat/chat';
import { bundledModelPath } from '../src/args.ts';

const pipe = await pipeline('text-generation', bundledModelPath(), { templateFallback: 'plain', maxContext: 128 });
const ids: number[] = [];
let text = '';
for await (const e of pipe.stream([{ role: 'user', content: 'Once upon a time' }], { do_sample: false, max_new_tokens: 24 })) {
  if (e.tokenId !== null) ids.push(e.tokenId);
  text += e.delta;
}
console.log(JSON.stringify({ ids, text, adapter: pipe.model.gpu.info.description }));
pipe.dispose();
// Dawn's instance can keep Node's event loop alive.
(globalThis as { process?: { exit(code: number): void } }).process?.exit(0);
