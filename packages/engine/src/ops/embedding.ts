// Token embedding lookup (kernels/embedding.wgsl): out[t, :] = E[ids[t], :] as f32, with the
// table in f32/bf16/f16, row-major or in row tiles (a tied LM head's layout, src/tiles.ts), and
// possibly split into row chunks (one dispatch per chunk).

import { type OpContext, ParamsBuffer } from './context.ts';
import { type LinearWeight, checkWeight, storedBytes, weightDefines } from './linear.ts';

export interface EmbeddingOp {
  /** Records the lookup of ids[0 .. tokens-1] into out[0 .. tokens-1, :]. */
  encode(pass: GPUComputePassEncoder, tokens: number): void;
  destroy(): void;
}

export class EmbeddingError extends Error {
  override name = 'EmbeddingError';
}

const WG = 64;

/** ids: u32 [maxTokens]; out: f32 [maxTokens, table.cols]. Ids >= table.rows give zero rows. */
export function createEmbedding(ctx: OpContext, table: LinearWeight, ids: GPUBuffer, out: GPUBuffer, opts: { maxTokens?: number } = {}): EmbeddingOp {
  checkWeight(table, 'embedding');
  const cols = table.cols;
  const maxTokens = opts.maxTokens ?? 1;
  if (!(Number.isInteger(maxTokens) && maxTokens > 0 && maxTokens <= ctx.limits.maxComputeWorkgroupsPerDimension)) {
    throw new EmbeddingError(`embedding: bad maxTokens ${maxTokens}`);
  }
  if (ids.size < maxTokens * 4) throw new EmbeddingError(`embedding: ids has ${ids.size} bytes, needs ${maxTokens * 4}`);
  if (out.size < maxTokens * cols * 4) throw new EmbeddingError(`embedding: out has ${out.size} bytes, needs ${maxTokens * cols * 4}`);
  const kernel = ctx.kernels.get('embedding', { ...weightDefines(table.dtype), TILED: !!table.tiled }, { WG });
  const parts = table.chunks.map((c, i) => {
    const params = new ParamsBuffer(ctx.device, kernel, {
      cols,
      rowStart: c.rowStart,
      rows: c.rows,
      vocab: table.rows,
      zeroInvalid: i === 0 ? 1 : 0,
    });
    const group = ctx.device.createBindGroup({
      layout: kernel.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: params.buffer } },
        { binding: 1, resource: { buffer: c.buffer, size: storedBytes(table, c) } },
        { binding: 2, resource: { buffer: ids } },
        { binding: 3, resource: { buffer: out } },
      ],
      label: kernel.key,
    });
    return { params, group };
  });
  return {
    encode(pass, tokens) {
      if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= maxTokens)) {
        throw new EmbeddingError(`embedding: tokens ${tokens} outside 1..${maxTokens}`);
      }
      pass.setPipeline(kernel.pipeline);
      for (const part of parts) {
        pass.setBindGroup(0, part.group);
        pass.dispatchWorkgroups(Math.ceil(cols / WG), tokens);
      }
    },
    destroy() {
      for (const part of parts) part.params.destroy();
    },
  };
}
