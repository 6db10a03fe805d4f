// scripts/setup-python.sh run against a stand-in python whose `pip install` prints what pip
// really printed for this script's installs: a fresh setup must show no line a user would
// read as a failure, and a genuine error must still show.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from './paths.ts';

// pip 23.2's stderr from `pip install more_itertools` after `pip install --no-deps lm-eval`
// against the local mirror.
const MIRROR_WARNING = "WARNING: Location 'file:///opt/pypi-more/simple/more-itertools/' is ignored: it is neither a file nor a directory.";
const RESOLVER_HEADING =
  "ERROR: pip's dependency resolver does not currently take into account all the packages that are installed. This behaviour is the source of the following dependency conflicts.";
const LM_EVAL_MISSING = [
  'lm-eval 0.4.13 requires evaluate>=0.4.0, which is not installed.',
  'lm-eval 0.4.13 requires pytablewriter, which is not installed.',
  'lm-eval 0.4.13 requires word2number, which is not installed.',
];

const tmp = mkdtempSync(join(tmpdir(), 'setup-python-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs a copy of the script in a folder whose .venv/bin/python prints `pipStderr` on every `pip install`. */
function setupStderr(pipStderr: string[]): string {
  const root = mkdtempSync(join(tmp, 'repo-'));
  mkdirSync(join(root, 'scripts'));
  copyFileSync(join(REPO_ROOT, 'scripts', 'setup-python.sh'), join(root, 'scripts', 'setup-python.sh'));
  mkdirSync(join(root, '.venv', 'bin'), { recursive: true });
  const python = join(root, '.venv', 'bin', 'python');
  // Every import check and `pip config get` fails, so the script installs everything.
  writeFileSync(python, '#!/usr/bin/env bash\n[ "$1 $2 $3" = "-m pip install" ] && { cat "$PIP_STDERR" >&2; exit 0; }\nexit 1\n');
  chmodSync(python, 0o755);
  writeFileSync(join(root, 'pip-stderr.txt'), pipStderr.map((l) => `${l}\n`).join(''));
  const run = spawnSync('bash', [join(root, 'scripts', 'setup-python.sh')], {
    env: { ...process.env, PYTHON: python, PIP_STDERR: join(root, 'pip-stderr.txt') },
    encoding: 'utf8',
  });
  expect(run.status, run.stderr).toBe(0);
  return run.stderr;
}

describe('scripts/setup-python.sh output', () => {
  it("hides the mirror's lookup warnings and the lm-eval dependencies --no-deps leaves out", () => {
    expect(setupStderr([MIRROR_WARNING, RESOLVER_HEADING, ...LM_EVAL_MISSING])).toBe('');
  });

  it('still shows any other conflict under the resolver heading, and other errors', () => {
    const conflict = 'datasets 2.19.0 requires fsspec[http]<=2024.3.1,>=2023.1.0, but you have fsspec 2024.6.0 which is incompatible.';
    const failure = 'ERROR: Could not find a version that satisfies the requirement accelerate (from versions: none)';
    const lines = setupStderr([RESOLVER_HEADING, LM_EVAL_MISSING[0]!, conflict, LM_EVAL_MISSING[1]!, failure]).split('\n');
    expect(lines).toContain(conflict);
    expect(lines.indexOf(RESOLVER_HEADING)).toBe(lines.indexOf(conflict) - 1);
    expect(lines).toContain(failure);
    expect(lines.join('\n')).not.toContain('lm-eval 0.4.13 requires');
  });
});
