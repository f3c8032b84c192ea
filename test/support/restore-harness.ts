/**
 * What the restore tests (test/thin/restore*.test.ts) share: a scratch path per restore, XML fed
 * in small chunks (element boundaries fall anywhere), restoreXml into a file, our dump of it, the
 * real thin_check 0.9 / 1.x passing it, and whether block 0 (the superblock) is zeroed.
 */
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileBlockFile } from '../../src/io/block-file.js';
import { dumpFile } from '../../src/thin/dump.js';
import { restoreXml, type RestoreOptions, type XmlInput } from '../../src/thin/restore.js';
import { run, tool09, tool1x } from './oracles.js';
import { tempDir } from './tmp.js';

let dir: string | undefined;
let nth = 0;
/** A fresh path in this process's scratch directory. */
export const newPath = (name: string) => join((dir ??= tempDir('thinpool-restore-')), `${nth++}-${name}`);
/** A dump without the trailing `exit=N` line the real tools' wrappers print. */
export const strip = (xml: string) => xml.replace(/\nexit=\d+\s*$/, '').trim();

/** Chunks of `size` bytes, so element boundaries fall anywhere. */
export async function* chunks(data: Uint8Array | string, size = 997): AsyncGenerator<Uint8Array> {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

export async function restoreTo(input: XmlInput, opts: RestoreOptions = { nrMetadataBlocks: 4096 }, path = newPath('meta')) {
  const f = await FileBlockFile.open(path, { create: true });
  try {
    const summary = await restoreXml(input, f, opts);
    return { path, summary };
  } finally {
    await f.close();
  }
}

export function ourDump(path: string, metadataSnap = false): Promise<string> {
  return dumpFile(path, { metadataSnap });
}

/** Both real thin_checks (those installed) pass `path` without a complaint. */
export async function assertChecks(path: string): Promise<void> {
  for (const exe of [tool09('thin_check'), tool1x('thin_check')]) {
    if (!exe) continue;
    const r = await run(exe, [path]);
    assert.is(r.code, 0, `${exe} ${path} exited ${r.code}:\n${r.stdout}${r.stderr}`);
    assert.not.match(r.stdout + r.stderr, /leak|error|differ|bad|mismatch/i, `${exe} complained:\n${r.stdout}${r.stderr}`);
  }
}

export async function blockZeroIsZero(path: string): Promise<boolean> {
  const b = readFileSync(path).subarray(0, 4096);
  return b.every((x) => x === 0);
}
