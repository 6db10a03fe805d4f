// `serve [MODEL] [options]`: the OpenAI-compatible server (see server.ts) over one model,
// loaded before /health reports ok.

import { SERVE_HELP, UsageError, bundledModelPath, parseServeArgs } from './args.ts';
import { BUNDLED_MODEL_ID, describeQuantization, disposeLoaded, formatAcceptance, healthFields, loadLocalModel, modelIdOf, type LoadedModel } from './backend.ts';
import { startChatServer, type RequestDone } from './server.ts';

/** One line per finished request: its id, outcome and speed, and the draft's acceptance. */
function logRequest(e: RequestDone): void {
  const s = e.stats;
  const speed = s ? `, ${s.decodeTokensPerSecond.toFixed(1)} tokens/s, TTFT ${s.timeToFirstTokenMs.toFixed(0)} ms` : '';
  const draft = s?.speculative ? `, ${formatAcceptance(s.speculative)}` : '';
  process.stderr.write(`serve: ${e.id} ${e.finishReason}: ${e.completionTokens} tokens${speed}${draft}\n`);
}

async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseServeArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`serve: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (args.help) {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  const spec = args.model ?? bundledModelPath();
  if (!args.model) process.stderr.write(`serve: no MODEL given: using the bundled default story model (${spec})\n`);
  const modelId = args.model ? modelIdOf(spec) : BUNDLED_MODEL_ID;
  const srv = await startChatServer({
    modelId,
    host: args.host,
    port: args.port,
    maxQueue: args.maxQueue,
    constraintTimeoutMs: args.constraintTimeout * 1000,
    constraintWorkers: args.constraintWorkers,
    corsOrigins: args.corsOrigins,
    onRequestDone: logRequest,
    ...(args.apiKey !== undefined ? { apiKey: args.apiKey } : {}),
  });
  let loaded: LoadedModel | undefined;
  let stopping = false;
  // SIGTERM/SIGINT drain (see ChatServer.shutdown) and exit 0; a second one exits at once.
  const stop = (signal: string) => {
    if (stopping) {
      process.stderr.write(`serve: ${signal} again: exiting without draining\n`);
      process.exit(1);
    }
    stopping = true;
    process.stderr.write(`serve: ${signal}: draining (running requests get up to ${args.shutdownTimeout} s)\n`);
    void srv.shutdown(args.shutdownTimeout * 1000).then(() => {
      if (loaded) disposeLoaded(loaded);
      process.stderr.write('serve: stopped\n');
      process.exit(0);
    });
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.stderr.write(`serve: listening on ${srv.url} (loading the model; /health answers 503 until ready)\n`);
  const t0 = performance.now();
  loaded = await loadLocalModel(spec, {
    modelId,
    dtype: args.dtype,
    parallel: args.parallel,
    ...(args.quantize ? { quantize: args.quantize } : {}),
    ...(args.draft ? { draft: args.draft } : {}),
    ...(args.maxContext ? { maxContext: args.maxContext } : {}),
    ...(args.toolCallParser ? { toolCallParser: args.toolCallParser } : {}),
  });
  // Before ready: the first steps of 2..8 sequences together, or of a first draft, would otherwise compile mid-reply.
  if (args.warmup) await loaded.pipe.generator.warmUp();
  const info = loaded.pipe.model.info;
  const health = { ...healthFields(loaded), ...(args.lookup ? { prompt_lookup: args.lookup } : {}) };
  srv.setModel({ model: loaded.pipe, health, ...(loaded.draft ? { assistant: loaded.draft.pipe } : {}), ...(args.lookup ? { defaults: args.lookup } : {}) });
  const weights = describeQuantization(info.quantization) ? `${info.dtype}, linear layers ${describeQuantization(info.quantization)}` : info.dtype;
  process.stderr.write(
    `serve: ${loaded.modelId} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s (${weights}, ${loaded.maxContext} tokens of context, ${args.parallel} requests at once` +
      `${loaded.draft ? `; draft ${loaded.draft.spec}` : ''}` +
      `${args.lookup ? `; prompt lookup of up to ${args.lookup.prompt_lookup_num_tokens} tokens` : ''}` +
      `${loaded.plainTemplate ? '; no chat template: messages are joined as plain text' : ''}) at ${srv.url}/v1\n`,
  );
  return new Promise<number>(() => {});
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`serve: ${(e as Error).name}: ${(e as Error).message}\n`);
    process.exit(1);
  },
);
