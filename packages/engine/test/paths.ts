// Where tests find the repository's files.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BUNDLED_MODEL = join(REPO_ROOT, 'models', 'stories260K');

