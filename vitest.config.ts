import { defineConfig } from 'vitest/config';

// GPU work on a software driver is slow and single-queue: run test files one at a
// time so two files never compete for the adapter, and give each test room.
export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts', 'bench/test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: 'forks',
  },
});
