// Constrained decoding off serve's event loop. XGrammar compiles a schema synchronously in
// WebAssembly, and a hostile one (length-bounded strings cost ~0.1 s per character of bound
// on a 151K vocabulary) would freeze every client, /health included. So the engine runs in
// a worker thread (constraint-worker.mjs) behind the chat package's CompiledConstraint and
// ConstraintMatcher: a mask copies the logits row into a buffer transferred there and back,
// an accept is a message in order behind it, and `done` is known here from the ids the last
// mask said would end the output. A worker busy compiling cannot mask, and a stalled mask
// stalls the whole batch, so a compile goes to a worker holding no other live constraint
// (up to `maxWorkers` of them; past that, the least loaded). A compile that runs past its
// limit is a 400 and its worker is ended (WebAssembly cannot be interrupted); any other
// request whose matchers lived there fails with a 503.

import { Worker } from 'node:worker_threads';
import { ConstraintError, type ChatTokenizer, type CompiledConstraint, type ConstraintMatcher, type ConstraintSpec } from '@webgpu-chat/chat';
import { ApiError, invalid, unavailable } from './http.ts';

interface WorkerFailure {
  name: string;
  message: string;
  keyword?: string;
  pointer?: string;
}
type Reply = { id: number; started?: true; error?: WorkerFailure; row?: Float32Array; endingIds?: number[] };
type Request =
  | { op: 'compile'; id: number; spec: ConstraintSpec }
  | { op: 'matcher'; id: number; constraint: number; eos: number[] }
  | { op: 'mask'; id: number; matcher: number; row: Float32Array }
  | { op: 'accept'; matcher: number; token: number }
  | { op: 'dispose-matcher'; matcher: number }
  | { op: 'dispose-constraint'; constraint: number };

interface Job {
  resolve(r: Reply): void;
  reject(e: Error): void;
  /** A compile's limit: its clock starts when the worker begins it. */
  timeout?: { ms: number; param: string; timer?: NodeJS.Timeout };
}

/** The error a worker's message stands for: a ConstraintError stays one (a 400 naming the keyword upstream). */
function errorOf(f: WorkerFailure): Error {
  if (f.name === 'ConstraintError') return new ConstraintError(f.message, f.keyword, f.pointer ?? '');
  const e = new Error(f.message);
  e.name = f.name;
  return e;
}

/** One worker's life: its jobs, and why it ended once it has. */
class Thread {
  private readonly worker: Worker;
  private readonly jobs = new Map<number, Job>();
  private nextId = 0;
  /** Set once the worker is gone; every later call fails with it. */
  ended: Error | undefined;
  /** Constraints compiling or compiled here and not yet disposed. */
  load = 0;

  constructor(tokenizer: ChatTokenizer, vocabSize: number) {
    this.worker = new Worker(new URL('./constraint-worker.mjs', import.meta.url), {
      workerData: { tokenizerJson: tokenizer.tokenizerJson, config: tokenizer.config, vocabSize },
    });
    this.worker.on('message', (m: Reply) => this.reply(m));
    const lost = (why: string) => this.end(unavailable(`The constrained-decoding worker stopped (${why}); retry the request.`, 'constraint_worker_failed'));
    this.worker.on('error', (e) => lost(e.message));
    this.worker.on('exit', (code) => lost(`exit code ${code}`));
    // An idle worker must not keep the process alive; one with work waited on must.
    this.worker.unref();
  }

  newId(): number {
    return this.nextId++;
  }

  /** Sends a request and waits for its answer; a compile gets `timeout`. */
  call(request: Request & { id: number }, transfer: ArrayBuffer[] = [], timeout?: Job['timeout']): Promise<Reply> {
    if (this.ended) return Promise.reject(this.ended);
    const answer = new Promise<Reply>((resolve, reject) => this.jobs.set(request.id, { resolve, reject, ...(timeout ? { timeout } : {}) }));
    if (this.jobs.size === 1) this.worker.ref();
    this.worker.postMessage(request, transfer);
    return answer;
  }

  /** Sends a request that has no answer (accept, dispose); after the end there is nothing to tell. */
  post(request: Request): void {
    if (!this.ended) this.worker.postMessage(request);
  }

  private reply(m: Reply): void {
    const job = this.jobs.get(m.id);
    if (!job) return;
    if (m.started) {
      if (job.timeout) job.timeout.timer = setTimeout(() => this.abandon(m.id, job), job.timeout.ms);
      return;
    }
    this.settled(m.id);
    clearTimeout(job.timeout?.timer);
    if (m.error) job.reject(errorOf(m.error));
    else job.resolve(m);
  }

  /** A compile past its limit: it fails with a 400 and the worker, still busy with it, is ended. */
  private abandon(id: number, job: Job): void {
    const { ms, param } = job.timeout!;
    this.settled(id);
    job.reject(invalid(`The JSON schema took over ${ms / 1000} s to compile and was abandoned; bound it more loosely (each character of a maxLength or maxItems bound adds states to compile) or simplify it`, param, 'schema_too_complex'));
    this.end(unavailable(`The constrained-decoding worker was restarted after another request's schema took over ${ms / 1000} s to compile; retry the request.`, 'constraint_worker_restarted'));
  }

  private settled(id: number): void {
    this.jobs.delete(id);
    if (this.jobs.size === 0) this.worker.unref();
  }

  /** Ends the worker: every job waiting on it fails with `e`. */
  end(e: Error): void {
    if (this.ended) return;
    this.ended = e;
    for (const job of this.jobs.values()) {
      clearTimeout(job.timeout?.timer);
      job.reject(e);
    }
    this.jobs.clear();
    void this.worker.terminate();
  }
}

export interface ConstraintThreadOptions {
  /** A compile past this many milliseconds is a 400 and restarts the worker. */
  compileTimeoutMs: number;
  /** Compiles that may wait for a worker; more get 503. */
  maxPending: number;
  /** Most workers at once. */
  maxWorkers: number;
}

/** Compiles serve's constraints in a worker thread; their matchers run there too. */
export class ConstraintThread {
  private threads: Thread[] = [];
  /** Compiles sent and not yet answered. */
  private compiling = 0;

  constructor(
    private readonly tokenizer: ChatTokenizer,
    private readonly vocabSize: number,
    private readonly opts: ConstraintThreadOptions,
  ) {}

  /** Compiles `spec` in the worker; a ConstraintError names a keyword it refuses, an ApiError a limit (`param` named). */
  async compile(spec: ConstraintSpec, param: string): Promise<CompiledConstraint> {
    if (this.compiling > this.opts.maxPending) throw unavailable(`The server is busy: ${this.compiling} schemas are being compiled. Retry later.`, 'server_overloaded');
    const t = this.pick();
    const id = t.newId();
    this.compiling++;
    t.load++;
    try {
      await t.call({ op: 'compile', id, spec }, [], { ms: this.opts.compileTimeoutMs, param });
    } catch (e) {
      t.load--;
      throw e;
    } finally {
      this.compiling--;
    }
    return new RemoteConstraint(t, id, spec, this.vocabSize);
  }

  /** A worker with no live constraint, a new one while there are fewer than maxWorkers, else the least loaded. */
  private pick(): Thread {
    this.threads = this.threads.filter((t) => !t.ended);
    const idle = this.threads.find((t) => t.load === 0);
    if (idle) return idle;
    if (this.threads.length < this.opts.maxWorkers) {
      const t = new Thread(this.tokenizer, this.vocabSize);
      this.threads.push(t);
      return t;
    }
    return this.threads.reduce((a, b) => (b.load < a.load ? b : a));
  }

  close(): void {
    for (const t of this.threads) t.end(new ApiError(503, 'The server is shutting down', 'server_error', null, 'server_shutting_down'));
    this.threads = [];
  }
}

class RemoteConstraint implements CompiledConstraint {
  private disposed = false;

  constructor(
    private readonly thread: Thread,
    private readonly id: number,
    readonly spec: ConstraintSpec,
    readonly vocabSize: number,
  ) {}

  async matcher(eos: Iterable<number>): Promise<ConstraintMatcher> {
    if (this.disposed) throw new ConstraintError('This constraint has been disposed');
    const id = this.thread.newId();
    await this.thread.call({ op: 'matcher', id, constraint: this.id, eos: [...eos] });
    return new RemoteMatcher(this.thread, id, this.vocabSize);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.thread.load--;
    this.thread.post({ op: 'dispose-constraint', constraint: this.id });
  }
}

class RemoteMatcher implements ConstraintMatcher {
  private ending: readonly number[] = [];
  private ended = false;
  /** The row last sent back, reused for the next mask (the caller's row may be a view it must keep). */
  private spare: Float32Array | undefined;

  constructor(
    private readonly thread: Thread,
    private readonly id: number,
    private readonly vocabSize: number,
  ) {}

  get done(): boolean {
    return this.ended;
  }

  get endingIds(): readonly number[] {
    return this.ending;
  }

  async mask(logits: Float32Array): Promise<void> {
    if (logits.length !== this.vocabSize) throw new RangeError(`a logits row of ${logits.length} for a constraint compiled for ${this.vocabSize}`);
    const row = this.spare ?? new Float32Array(this.vocabSize);
    this.spare = undefined;
    row.set(logits);
    const reply = await this.thread.call({ op: 'mask', id: this.thread.newId(), matcher: this.id, row }, [row.buffer as ArrayBuffer]);
    logits.set(reply.row!);
    this.spare = reply.row!;
    this.ending = reply.endingIds!;
  }

  /** The worker checks the token in order; one it refuses fails the next mask. */
  accept(id: number): void {
    if (this.ended) throw new ConstraintError(`Token ${id} is not allowed here by the constraint (done)`);
    this.thread.post({ op: 'accept', matcher: this.id, token: id });
    this.ended = this.ending.includes(id);
    this.ending = [];
  }

  dispose(): void {
    this.thread.post({ op: 'dispose-matcher', matcher: this.id });
  }
}
