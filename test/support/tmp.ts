/** Temporary directories for tests, removed at process exit (also after a failing test). */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const made: string[] = [];
process.on('exit', () => {
  if (process.env.THINPOOL_KEEP_TMP) return;
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A fresh empty directory under the system temp dir. */
export function tempDir(prefix = 'thinpool-test-'): string {
  const d = mkdtempSync(join(process.env.THINPOOL_TMPDIR || tmpdir(), prefix));
  made.push(d);
  return d;
}
