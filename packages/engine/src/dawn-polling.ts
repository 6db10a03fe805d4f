// dawn.node (the `webgpu` npm package) settles its promises (mapAsync, onSubmittedWorkDone,
// pipeline creation) by calling the instance's ProcessEvents from a setImmediate loop for as long
// as any of them is pending (dawn's AsyncRunner; crbug.com/dawn/1127). While the GPU works, that
// loop keeps the JS thread at 100% of a core. On a CPU-backed adapter the "GPU" is the other cores:
// measured on 2 cores with lavapipe, the loop took 45% of all CPU time and left the driver's two
// worker threads under one core between them, halving every kernel's speed.
//
// So Dawn's polling spins for the first part of a wait and then polls once per millisecond from a
// timer, which costs a wait up to a millisecond or two of latency (Node's timers fire late) and
// almost no CPU. How long it spins follows the waits this process has seen: when they are short
// (a tiny model's decode step, a small read-back) a timer's latency would be a large part of each
// one, and spinning through them is the cheaper choice (stories260K decodes about twice as fast);
// when they are long, it spins SPIN_MS only.

type Callback = (...args: unknown[]) => void;

/** The least a wait spins before falling back to a 1 ms timer. */
export const SPIN_MS = 1;
/** The most: waits typically shorter than this are spun through. */
export const MAX_SPIN_MS = 6;
/** Weight of a finished wait in the running mean of wait durations. */
const WAIT_SMOOTHING = 0.2;

let installed = false;

/** Dawn schedules its polls with anonymous native functions; JS callbacks and bound functions are left alone. */
function isDawnPoll(cb: unknown): cb is Callback {
  return typeof cb === 'function' && cb.name === '' && Function.prototype.toString.call(cb).includes('[native code]');
}

/** How long a wait spins, from the running mean of how long waits took. */
export function spinBudget(typicalWaitMs: number): number {
  return typicalWaitMs <= MAX_SPIN_MS ? Math.max(SPIN_MS, Math.min(MAX_SPIN_MS, 1.5 * typicalWaitMs)) : SPIN_MS;
}

/** Wraps globalThis.setImmediate once per process (Node only: call before creating the Dawn instance). */
export function throttleDawnPolling(): void {
  if (installed) return;
  installed = true;
  const g = globalThis as unknown as { setImmediate: (cb: Callback, ...args: unknown[]) => unknown };
  const immediate = g.setImmediate;
  // A poll that schedules the next one continues the same wait; any other poll starts a new one,
  // and a poll that schedules none ends its wait.
  let polling = false;
  let continued = false;
  let waitStart = 0;
  let typicalWait = MAX_SPIN_MS + 1;
  g.setImmediate = (cb: Callback, ...args: unknown[]) => {
    if (!isDawnPoll(cb)) return immediate(cb, ...args);
    const now = performance.now();
    if (polling) continued = true;
    else waitStart = now;
    const poll = () => {
      polling = true;
      continued = false;
      try {
        cb(...args);
      } finally {
        polling = false;
        if (!continued) typicalWait += WAIT_SMOOTHING * (performance.now() - waitStart - typicalWait);
      }
    };
    return now - waitStart < spinBudget(typicalWait) ? immediate(poll) : setTimeout(poll, 1);
  };
}
