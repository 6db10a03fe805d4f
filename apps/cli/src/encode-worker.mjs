// A worker thread that tokenizes prompts for encoder.ts, so a long one never blocks the
// server's event loop. Plain JavaScript: the chat package is TypeScript, which Node reads
// only through tsx's loader (registered here; Deno reads it natively).
import { parentPort, workerData } from 'node:worker_threads';

if (!('Deno' in globalThis)) {
  const { register } = await import('tsx/esm/api');
  register();
}
const { ChatTokenizer } = await import('@webgpu-chat/chat');
const tokenizer = new ChatTokenizer(workerData.tokenizerJson, workerData.config);

parentPort.on('message', ({ id, text, addSpecialTokens }) => {
  try {
    const ids = Int32Array.from(tokenizer.encode(text, { addSpecialTokens }));
    parentPort.postMessage({ id, ids }, [ids.buffer]);
  } catch (e) {
    parentPort.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
});
