// dawn.node (the `webgpu` npm package) settles its promises (mapAsync, onSubmittedWorkDone,
// pipeline creation) by calling the instance's ProcessEvents from a setImmediate loop for as long
// as any of them is pending (dawn's AsyncRunner; crbug.com/dawn/1127). While the GPU works, that
// loop keeps the JS thread at 100% of a core. On a CPU-backed adapter the "GPU" is the other cores:
// measured on 2 cores with lavapipe, the loop took 45% of all CPU time and left the driver's two
// worker threads under one core between them, halving every kernel's speed.
//
// So Dawn's polling is let spin for the first SPIN_MS of a wait (short waits, such as a small
// read-back, stay as fast as before) and then polls once per millisecond from a timer, which costs
// a wait at most about a millisecond of latency and almost no CPU.

type Callback = (...args: unknown[]) => void;

/** How long a wait polls at full speed before falling back to a 1 ms timer. */
export const SPIN_MS = 1;

let installed = false;

/** Dawn schedules its polls with anonymous native functions; JS callbacks and bound functions are left alone. */
function isDawnPoll(cb: unknown): cb is Callback {
  return typeof cb === 'function' && cb.name === '' && Function.prototype.toString.call(cb).includes('[native code]');
}

/** Wraps globalThis.setImmediate once per process (Node only: call before creating the Dawn instance). */
export function throttleDawnPolling(): void {
  if (installed) return;
  installed = true;
  const g = globalThis as unknown as { setImmediate: (cb: Callback, ...args: unknown[]) => unknown };
  const immediate = g.setImmediate;
  // A poll that schedules the next one continues the same wait; any other poll starts a new one.
  let polling = false;
  let waitStart = 0;
  g.setImmediate = (cb: Callback, ...args: unknown[]) => {
    if (!isDawnPoll(cb)) return immediate(cb, ...args);
    const now = performance.now();
    if (!polling) waitStart = now;
    const poll = () => {
      polling = true;
      try {
        cb(...args);
      } finally {
        polling = false;
      }
    };
    return now - waitStart < SPIN_MS ? immediate(poll) : setTimeout(poll, 1);
  };
}
