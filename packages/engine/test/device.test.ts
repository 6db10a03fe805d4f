import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { describeGpu } from '../src/device.ts';
import { testGpu } from './harness.ts';
import { REPO_ROOT } from './paths.ts';

describe('device', () => {
  it('reports the adapter, its real limits and the optional features it granted', async () => {
    const gpu = await testGpu();
    const text = describeGpu(gpu.info);
    console.log(`adapter: ${text}${gpu.info.driver ? ` [driver ${gpu.info.driver}]` : ''}`);
    expect(gpu.info.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    expect(gpu.info.limits.maxBufferSize).toBeGreaterThanOrEqual(gpu.info.limits.maxStorageBufferBindingSize);
    // The device was created with the adapter's limits, not WebGPU's defaults.
    expect(gpu.device.limits.maxStorageBufferBindingSize).toBe(gpu.info.limits.maxStorageBufferBindingSize);
    for (const f of ['shader-f16', 'subgroups', 'timestamp-query'] as const) expect(gpu.info.features.includes(f)).toBe(gpu.device.features.has(f));
    expect(text).toContain('maxStorageBufferBindingSize');
  });

  it('says what to install when no adapter can be had', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wgc-device-'));
    const script = join(dir, 'probe.mts');
    writeFileSync(
      script,
      `import { requestGpu } from ${JSON.stringify(join(REPO_ROOT, 'packages/engine/src/device.ts'))};
      try { await requestGpu(); console.log('ADAPTER'); } catch (e) { console.log(e.name + ': ' + e.message); }
      process.exit(0);`,
    );
    const { stdout } = await promisify(execFile)(join(REPO_ROOT, 'node_modules/.bin/tsx'), [script], {
      cwd: REPO_ROOT,
      env: { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' },
    });
    expect(stdout).toMatch(/NoAdapterError: No WebGPU adapter found.*mesa-vulkan-drivers/s);
  });
});
