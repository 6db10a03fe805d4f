// Tokenizes the server's prompts. A long prompt (megabytes fit under the body cap) takes
// seconds to minutes to tokenize; on the event loop that would freeze every other client,
// /health included. So long texts go to a worker thread (encode-worker.mjs), which is
// ended after a very long one to give its memory back; short ones stay inline, where a
// round trip would cost more than the work.

import { Worker } from 'node:worker_threads';
import type { ChatTokenizer, EncodeOptions } from '@webgpu-chat/chat';
import { unavailable } from './http.ts';

/** Texts up to this many UTF-16 units are tokenized inline (well under 50 ms for any tokenizer tried). */
const INLINE_CHARS = 16_384;
/** After a text this long the worker is ended: its heap grew by hundreds of MB and V8 keeps it. */
const RECYCLE_CHARS = 1 << 20;

interface Job {
  resolve(ids: number[]): void;
  reject(e: Error): void;
}

export class PromptEncoder {
  private worker: Worker | undefined;
  private readonly jobs = new Map<number, Job>();
  private nextId = 0;
  private recycle = false;

  constructor(
    private readonly tokenizer: ChatTokenizer,
    /** Long prompts that may wait for the worker; more get 503. */
    private readonly maxPending: number,
  ) {}

  async encode(text: string, opts: Required<EncodeOptions>): Promise<number[]> {
    if (text.length <= INLINE_CHARS) return this.tokenizer.encode(text, opts);
    if (this.jobs.size > this.maxPending) throw unavailable(`The server is busy: ${this.jobs.size} long prompts are being tokenized. Retry later.`, 'server_overloaded');
    if (text.length > RECYCLE_CHARS) this.recycle = true;
    const id = this.nextId++;
    const done = new Promise<number[]>((resolve, reject) => this.jobs.set(id, { resolve, reject }));
    this.start().postMessage({ id, text, addSpecialTokens: opts.addSpecialTokens });
    return done;
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./encode-worker.mjs', import.meta.url), {
      workerData: { tokenizerJson: this.tokenizer.tokenizerJson, config: this.tokenizer.config },
    });
    w.on('message', (m: { id: number; ids?: Int32Array; error?: string }) => {
      const job = this.jobs.get(m.id);
      this.jobs.delete(m.id);
      if (m.ids) job?.resolve(Array.from(m.ids));
      else job?.reject(new Error(`Tokenizing the prompt failed: ${m.error}`));
      if (this.jobs.size === 0 && this.recycle) this.stop();
    });
    w.on('error', (e) => this.fail(e));
    w.on('exit', (code) => {
      if (this.worker === w) this.fail(new Error(`the tokenizer worker exited (code ${code})`));
    });
    // An idle worker must not keep the process alive.
    w.unref();
    this.worker = w;
    return w;
  }

  private fail(e: Error): void {
    for (const job of this.jobs.values()) job.reject(e);
    this.jobs.clear();
    this.stop();
  }

  private stop(): void {
    const w = this.worker;
    this.worker = undefined;
    this.recycle = false;
    void w?.terminate();
  }

  close(): void {
    this.fail(new Error('the server is shutting down'));
  }
}
