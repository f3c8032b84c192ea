/**
 * The image service's scratch directories (`POOL/run/images/op-*`: mount points of the layers
 * being applied, decompressed archives, layers being written). An operation removes its own; a
 * crash leaves them, and a prune removes those no mount is left under (never deleting through a
 * mount: a directory with anything mounted below it stays until `pool cleanup` unmounts it).
 */
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/** Mount points (in this mount namespace) at or below `dir`. */
export async function mountpointsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const mp = line.split(' ')[4];
    if (mp === undefined) continue;
    const p = unescape(mp);
    if (p === dir || p.startsWith(dir + '/')) out.push(p);
  }
  return out;
}

/** Removes the scratch directories under `root` that no mount is left under; returns how many. */
export async function removeStaleScratch(root: string): Promise<number> {
  let n = 0;
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith('op-')) continue;
    const dir = join(root, name);
    if ((await mountpointsUnder(dir)).length) continue;
    await rm(dir, { recursive: true, force: true });
    n++;
  }
  return n;
}
