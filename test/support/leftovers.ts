/** What attaching devices under a pool directory can leave behind, for tests that must leave nothing. */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from './oracles.js';

/** Loop devices backed by files under `dir`, nbdfuse processes naming it, mounts under it, attachment files. */
export async function leftovers(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const l of (await run('losetup', ['-a'])).stdout.split('\n')) if (l.includes(dir)) out.push(`loop ${l}`);
  for (const l of (await run('pgrep', ['-af', 'nbdfuse'])).stdout.split('\n')) if (l.includes(dir)) out.push(`process ${l}`);
  for (const l of (await run('findmnt', ['-rn', '-o', 'TARGET'])).stdout.split('\n')) if (l.startsWith(dir)) out.push(`mount ${l}`);
  const att = join(dir, 'run', 'attach');
  if (existsSync(att)) for (const f of readdirSync(att)) out.push(`file ${join(att, f)}`);
  return out;
}
