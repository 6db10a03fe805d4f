// lm-evaluation-harness against `serve`: a small multiple-choice task (data written here
// as a local JSON file, task YAML in a temp dir) run with lm-eval's `local-completions`
// model on our server at 127.0.0.1, and with lm-eval's own `hf` model (Transformers) on
// the same stories260K folder: every request's log-likelihood must agree. Skips when the
// .venv cannot import lm_eval (install: scripts/setup-python.sh).
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledModelPath } from '../src/args.ts';
import { loadLocalModel, type LoadedModel } from '../src/backend.ts';
import { startChatServer, type ChatServer } from '../src/server.ts';
import { REPO_ROOT } from '@webgpu-chat/engine/testing';

const PYTHON = process.env.REFERENCE_PYTHON ?? join(REPO_ROOT, '.venv', 'bin', 'python');
const SCRIPT = join(REPO_ROOT, 'scripts', 'lm-eval', 'run_task.py');
const MODEL = 'stories260K';
const TASK = 'tiny_story_choice';

function lmEvalAvailable(): string | undefined {
  try {
    execFileSync(PYTHON, ['-c', 'import lm_eval, lm_eval.evaluator, lm_eval.models.openai_completions, lm_eval.models.huggingface, tenacity, aiohttp, requests'], { stdio: 'pipe', timeout: 300_000 });
    return undefined;
  } catch (e) {
    const why = (e as { stderr?: Buffer }).stderr?.toString().trim().split('\n').at(-1) ?? String(e);
    return `skipped: ${PYTHON} cannot import lm_eval (${why}); run scripts/setup-python.sh with the package mirror reachable`;
  }
}

const skip = lmEvalAvailable();
if (skip) console.warn(skip);

/** Stories with one right ending among three. */
const DOCS = [
  { context: 'Once upon a time, there was a little girl named Lily. She loved to play', choices: [' outside in the park.', ' the moon and the car.', ' sad big the ran.'], label: 0 },
  { context: 'Tom had a big red ball. He liked to', choices: [' kick the ball with his friends.', ' ball red big a had.', ' eat the sky.'], label: 0 },
  { context: 'The cat was hungry. It went to the kitchen to find', choices: [' blue run happy.', ' some food to eat.', ' a car in the sky.'], label: 1 },
  { context: 'Lily and her mom went to the park. They saw a', choices: [' happy the went.', ' tree under and.', ' big tree and a little bird.'], label: 2 },
  { context: 'One day, a little boy named Ben found a', choices: [' shiny stone in the garden.', ' jumped was very.', ' the the the.'], label: 0 },
  { context: 'The sun was hot. Sue wanted to', choices: [' swim in the cool water.', ' water cool the in.', ' sun sun hot was.'], label: 0 },
];

let dir: string;
let srv: ChatServer;
let loaded: LoadedModel;

interface RunOutput {
  metrics: Record<string, number>;
  requests: { doc_id: number; choice: number; loglikelihood: number; greedy: boolean }[];
  n_samples: number;
}

async function runTask(model: 'hf' | 'local-completions', modelArgs: string): Promise<RunOutput> {
  const out = join(dir, `${model}.json`);
  await promisify(execFile)(PYTHON, [SCRIPT, '--tasks-dir', join(dir, 'tasks'), '--task', TASK, '--model', model, '--model-args', modelArgs, '--out', out], {
    timeout: 600_000,
    maxBuffer: 64 << 20,
    env: {
      ...process.env,
      HF_HUB_OFFLINE: '1',
      HF_DATASETS_OFFLINE: '1',
      TRANSFORMERS_OFFLINE: '1',
      HF_HOME: join(dir, 'hf-home'),
      HF_DATASETS_CACHE: join(dir, 'datasets-cache'),
      OMP_NUM_THREADS: '1',
      TOKENIZERS_PARALLELISM: 'false',
    },
  });
  return JSON.parse(readFileSync(out, 'utf8')) as RunOutput;
}

describe.skipIf(skip !== undefined)('lm-evaluation-harness local-completions against serve', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wgc-lm-eval-'));
    const data = join(dir, 'stories.jsonl');
    writeFileSync(data, DOCS.map((d) => JSON.stringify(d)).join('\n') + '\n');
    execFileSync('mkdir', ['-p', join(dir, 'tasks')]);
    writeFileSync(
      join(dir, 'tasks', `${TASK}.yaml`),
      [
        `task: ${TASK}`,
        'dataset_path: json',
        'dataset_kwargs:',
        '  data_files:',
        `    test: ${JSON.stringify(data)}`,
        'test_split: test',
        'output_type: multiple_choice',
        'doc_to_text: "{{context}}"',
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"',
        'metric_list:',
        '  - metric: acc',
        '    aggregation: mean',
        '    higher_is_better: true',
        '  - metric: acc_norm',
        '    aggregation: mean',
        '    higher_is_better: true',
        '',
      ].join('\n'),
    );
    srv = await startChatServer({ modelId: MODEL, port: 0 });
    loaded = await loadLocalModel(bundledModelPath(), { dtype: 'f32', modelId: MODEL, maxContext: 512, log: () => {} });
    srv.setModel({ model: loaded.pipe });
  });

  afterAll(async () => {
    await srv?.close();
    loaded?.pipe.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('per-request log-likelihoods equal lm-eval hf on the same folder', async () => {
    const folder = bundledModelPath();
    // add_bos_token on both sides: stories260K was trained with a BOS before each story, and
    // the two lm-eval models would otherwise differ in whether they add it.
    const ours = await runTask(
      'local-completions',
      `model=${MODEL},base_url=${srv.url}/v1/completions,tokenizer_backend=huggingface,tokenizer=${folder},tokenized_requests=True,add_bos_token=True,max_length=512,num_concurrent=1,max_retries=1`,
    );
    const hf = await runTask('hf', `pretrained=${folder},dtype=float32,add_bos_token=True`);
    const nChoices = DOCS.reduce((a, d) => a + d.choices.length, 0);
    expect(ours.requests).toHaveLength(nChoices);
    expect(hf.requests).toHaveLength(nChoices);
    const key = (r: { doc_id: number; choice: number }) => `${r.doc_id}/${r.choice}`;
    const want = new Map(hf.requests.map((r) => [key(r), r]));
    let maxErr = 0;
    for (const r of ours.requests) {
      const w = want.get(key(r))!;
      maxErr = Math.max(maxErr, Math.abs(r.loglikelihood - w.loglikelihood));
      expect(r.greedy).toBe(w.greedy);
    }
    const table = ['| model | acc | acc_norm |', '|---|---|---|', ...[['serve (local-completions)', ours], ['hf', hf] as const].map(([n, o]) => `| ${n} | ${(o as RunOutput).metrics['acc,none']} | ${(o as RunOutput).metrics['acc_norm,none']} |`)];
    console.log(`lm-eval ${TASK} (${DOCS.length} docs, ${nChoices} requests), max |Δ loglikelihood| ${maxErr.toExponential(2)}\n${table.join('\n')}`);
    expect(maxErr).toBeLessThan(1e-3);
    expect(ours.metrics['acc,none']).toBe(hf.metrics['acc,none']);
    expect(ours.metrics['acc_norm,none']).toBe(hf.metrics['acc_norm,none']);
  }, 900_000);
});
