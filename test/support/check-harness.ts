/**
 * What the checker's tests (test/thin/check*.test.ts) share: a read-only in-memory metadata image,
 * our verdict and the real thin_check 0.9 / 1.x verdicts on a file, a bounded parallel map, and
 * readers of an image's superblock and blocks.
 */
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import type { BlockFile } from '../../src/io/block-file.js';
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { checkMetadata } from '../../src/thin/check.js';
import { type CheckIssue, type CheckReport, ISSUE_CODES } from '../../src/thin/check-issues.js';
import { formatReport } from '../../src/thin/check-report.js';
import { unpackSuperblock } from '../../src/thin/superblock.js';
import { haveTools, run, tool09, tool1x } from './oracles.js';
import { tempDir } from './tmp.js';

export const have09 = haveTools('thin_check');
export const have1x = haveTools('1x:thin_check');
let scratch: string | undefined;
export const tmpPath = (name: string) => join((scratch ??= tempDir('thinpool-check-')), `${Math.random().toString(36).slice(2, 8)}-${name}`);

/** A metadata image in memory that refuses every write: the checker must only read. */
export class ImageFile implements BlockFile {
  readonly path: string;
  constructor(readonly image: Uint8Array, name = 'image') {
    this.path = name;
  }
  async read(buf: Uint8Array, position: number): Promise<void> {
    buf.fill(0);
    if (position < this.image.length) buf.set(this.image.subarray(position, Math.min(this.image.length, position + buf.length)));
  }
  private refuse(what: string): never {
    throw new Error(`the checker tried to ${what} its input`);
  }
  async write(): Promise<void> {
    this.refuse('write');
  }
  async writev(): Promise<void> {
    this.refuse('write');
  }
  async sync(): Promise<void> {
    this.refuse('sync');
  }
  async writeDurable(): Promise<void> {
    this.refuse('write');
  }
  async size(): Promise<number> {
    return this.image.length;
  }
  async truncate(): Promise<void> {
    this.refuse('truncate');
  }
  async punchHole(): Promise<void> {
    this.refuse('punch a hole in');
  }
  async close(): Promise<void> {}
}

/** Checks an image in memory; every code reported must belong to the closed set. */
export async function check(img: Uint8Array): Promise<CheckReport> {
  const r = await checkMetadata(new ImageFile(img));
  for (const i of r.issues) assert.ok(i.code in ISSUE_CODES, `unknown issue code ${i.code}`);
  return r;
}

export type Verdict = 'ok' | 'leak' | 'damage';
export const ours = (r: CheckReport): Verdict => (r.summary.damage ? 'damage' : r.summary.leaks ? 'leak' : 'ok');
export const rank: Record<Verdict, number> = { ok: 0, leak: 1, damage: 2 };

/** A real thin_check's verdict: exit 0 = ok; nonzero only without --ignore-non-fatal-errors = leak (non-fatal); else damage. */
export async function toolVerdict(prog: string, path: string): Promise<Verdict> {
  const [strict, lax] = await Promise.all([run(prog, [path]), run(prog, ['--ignore-non-fatal-errors', path])]);
  if (strict.code === 0) return 'ok';
  return lax.code === 0 ? 'leak' : 'damage';
}

export async function verdicts(path: string): Promise<{ v09?: Verdict; v1x?: Verdict }> {
  const [v09, v1x] = await Promise.all([have09 ? toolVerdict(tool09('thin_check')!, path) : undefined, have1x ? toolVerdict(tool1x('thin_check')!, path) : undefined]);
  const out: { v09?: Verdict; v1x?: Verdict } = {};
  if (v09) out.v09 = v09;
  if (v1x) out.v1x = v1x;
  return out;
}

/** Runs `fn` over `items`, `n` at a time (the 1.x thin_check sleeps 0.5 s per run). */
export async function mapLimit<T, R>(items: readonly T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

export const show = (r: CheckReport) => formatReport(r);
export const has = (r: CheckReport, severity: CheckIssue['severity'], code: string, block?: number) =>
  r.issues.some((i) => i.severity === severity && i.code === code && (block === undefined || i.block === block));

export const sbOf = (img: Uint8Array) => unpackSuperblock(newBlock(0, img.slice(0, BLOCK_SIZE)));
export const blockOf = (img: Uint8Array, nr: number) => newBlock(nr, img.subarray(nr * BLOCK_SIZE, (nr + 1) * BLOCK_SIZE));

/** The damaged-image base most patches start from. */
export const BASE = 'kernel/errors/base.bin.gz';
