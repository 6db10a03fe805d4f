// The first requestAdapter() on a Dawn instance lists the Vulkan adapters, and Dawn clamps a
// driver's dynamic-buffer limits to the 16 it supports with two lines on stderr: "Warning:
// maxDynamic{Uniform,Storage}BuffersPerPipelineLayout artificially reduced from 1000000 to 16
// ..." (lavapipe reports 1000000, RADV 500000). They come from the driver's numbers, before
// any device is requested, so no requested limit avoids them; Dawn writes them with fprintf
// and has no switch for its log, so nothing in JS sees them. Every command printed them and a
// user took them for a fault. They are written inside that synchronous call, so fd 2 points at
// a temporary file for that call alone and what it caught, less those two lines, is written back.
//
// Node has no dup2: fd 2 is closed and taken by the next open (the lowest free descriptor), and
// restored by reopening the saved stderr through /proc. A reopened terminal or pipe is the same
// stream; a reopened file would get an offset of its own and write over stdout's text where both
// share one, so stderr that is a file or socket, and other systems, are left alone. (A file that
// another thread opened between that close and open would take fd 2 instead: the window is two
// system calls, at the adapter request a command makes as it starts its GPU.)

const LIMIT_WARNING =
  /^Warning: maxDynamic(Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.$/;

type Fs = typeof import('node:fs');

/** Points fd 2 at a new file at `path` and returns what undoes that and reads the file, or undefined where stderr is left alone. */
function captureStderr(fs: Fs, path: string): (() => string) | undefined {
  if (process.platform !== 'linux') return undefined;
  let saved: number | undefined;
  let capture: number;
  try {
    const st = fs.fstatSync(2);
    if (!st.isCharacterDevice() && !st.isFIFO()) return undefined;
    saved = fs.openSync('/proc/self/fd/2', fs.constants.O_WRONLY);
    capture = fs.openSync(path, 'w');
  } catch {
    if (saved !== undefined) fs.closeSync(saved);
    return undefined;
  }
  fs.closeSync(2);
  fs.openSync(`/proc/self/fd/${capture}`, fs.constants.O_WRONLY);
  fs.closeSync(capture);
  return () => {
    fs.closeSync(2);
    fs.openSync(`/proc/self/fd/${saved}`, fs.constants.O_WRONLY);
    fs.closeSync(saved);
    const caught = fs.readFileSync(path, 'utf8');
    fs.unlinkSync(path);
    return caught;
  };
}

/** `gpu.requestAdapter(options)` on Dawn's instance, with its two limit warnings dropped from stderr. */
export async function requestAdapterQuietly(gpu: GPU, options: GPURequestAdapterOptions): Promise<GPUAdapter | null> {
  // Imported here, not at the top: device.ts, which the browser bundle holds, imports this file.
  const fs = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const restore = captureStderr(fs, `${tmpdir()}/webgpu-chat-stderr-${process.pid}`);
  if (!restore) return gpu.requestAdapter(options);
  try {
    return gpu.requestAdapter(options);
  } finally {
    const kept = restore().split('\n').filter((line) => !LIMIT_WARNING.test(line)).join('\n');
    if (kept) fs.writeSync(2, kept);
  }
}
