// Where tests find the repository's and the shared folder's files.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '../../..');
/** ../shared beside the checkout (fixtures and references); absent in some checkouts. */
export const SHARED = join(REPO_ROOT, '..', 'shared');
export const STORIES_FIXTURE = join(SHARED, 'fixtures', 'stories260K');
export const BUNDLED_MODEL = join(REPO_ROOT, 'models', 'stories260K');

export function sharedFixtureMissing(): string | false {
  return existsSync(join(STORIES_FIXTURE, 'stories260K.bin'))
    ? false
    : `skipped: ${STORIES_FIXTURE} is absent (the shared fixtures folder is not beside this checkout)`;
}
