/**
 * Metadata fuzzing: seeded mutations of metadata images (bit flips with and without a fixed-up
 * checksum, random values in headers, nodes and bitmaps with the checksum fixed so the structure
 * itself is tested, block swaps, zeroed blocks, truncations), and one case's run through every
 * reader: open + dump + ls of the live and held trees, and the checker. Each reader must succeed
 * or fail with a coded thinpool error; anything else (a TypeError, a RangeError, a plain Error)
 * is a bug. Runs in a worker (metadata-fuzz-worker.ts) so a hang can be caught and reported.
 */
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { ThinpoolError, RangeErrorWithCode } from '../../src/errors.js';
import { BLOCK_SIZE, newBlock } from '../../src/pdata/block-manager.js';
import { nodeValidator } from '../../src/pdata/btree-node.js';
import { bitmapValidator, indexBlockValidator } from '../../src/pdata/space-map-disk.js';
import { checkMetadata } from '../../src/thin/check.js';
import { dumpView } from '../../src/thin/dump.js';
import { lsView } from '../../src/thin/ls.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { superblockValidator } from '../../src/thin/superblock.js';
import { FaultyBlockFile } from './faulty-file.js';
import { type BlockKind, refix } from './patch.js';
import { Rng } from './rng.js';

/** The kind of every block of an image that passes one of the validators (unused blocks: none). */
export function blockKinds(img: Uint8Array): BlockKind[] {
  const n = Math.floor(img.length / BLOCK_SIZE);
  const kinds: BlockKind[] = [];
  const tries: Array<[BlockKind, { check(b: ReturnType<typeof newBlock>): void }]> = [['node', nodeValidator], ['bitmap', bitmapValidator], ['index', indexBlockValidator]];
  for (let i = 0; i < n; i++) {
    const b = newBlock(i, img.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
    let kind: BlockKind = 'none';
    if (i === 0) {
      try {
        superblockValidator.check(b);
        kind = 'super';
      } catch {
        // a damaged vector
      }
    } else {
      for (const [k, v] of tries) {
        try {
          v.check(b);
          kind = k;
          break;
        } catch {
          // not this kind
        }
      }
    }
    kinds.push(kind);
  }
  return kinds;
}

const INTERESTING = [0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0x7fffffff, 0x80000000, 0xffffffff, 252, 253, 126, 127, 1024, 4096];

/**
 * Applies 1-3 seeded mutations to a copy of `img` (whose used blocks are `kinds`).
 * @returns the mutated image and what was done, e.g. `flip+fix b12@40; truncate 30 blocks`.
 */
export function mutate(img: Uint8Array, kinds: readonly BlockKind[], seed: number): { img: Uint8Array; what: string } {
  const rng = new Rng(seed);
  let out = img.slice();
  const used = kinds.map((k, i) => [k, i] as const).filter(([k]) => k !== 'none').map(([, i]) => i);
  if (used.length === 0) used.push(0);
  const what: string[] = [];
  const n = rng.range(1, 3);
  for (let m = 0; m < n; m++) {
    const blocks = Math.floor(out.length / BLOCK_SIZE);
    const b = rng.pick(used);
    if (b >= blocks) continue;
    const kind = kinds[b]!;
    const base = b * BLOCK_SIZE;
    const r = rng.float();
    if (r < 0.2) {
      const bits = rng.range(1, 4);
      for (let i = 0; i < bits; i++) out[base + rng.int(BLOCK_SIZE)]! ^= 1 << rng.int(8);
      what.push(`flip ${bits} b${b}`);
    } else if (r < 0.45) {
      // past the checksum: the structure itself
      const bits = rng.range(1, 4);
      const inHeader = rng.chance(0.5);
      for (let i = 0; i < bits; i++) out[base + 4 + (inHeader ? rng.int(60) : rng.int(BLOCK_SIZE - 4))]! ^= 1 << rng.int(8);
      fix(out, b, kind);
      what.push(`flip+fix ${bits} b${b}${inHeader ? ' header' : ''}`);
    } else if (r < 0.7) {
      const wide = rng.chance(0.4);
      const off = rng.chance(0.5) ? 16 + 4 * rng.int(12) : 4 * rng.int(BLOCK_SIZE / 4 - 2);
      const v = rng.chance(0.6) ? rng.pick(INTERESTING) : Math.floor(rng.float() * 2 ** 32);
      const view = new DataView(out.buffer, out.byteOffset + base, BLOCK_SIZE);
      if (wide && off + 8 <= BLOCK_SIZE) view.setBigUint64(off, rng.chance(0.2) ? 0xffffffffffffffffn : BigInt(v) * BigInt(rng.range(1, 3)), true);
      else view.setUint32(off, v, true);
      fix(out, b, kind);
      what.push(`value+fix b${b}@${off}=${v}`);
    } else if (r < 0.82) {
      const other = rng.pick(used);
      if (other < blocks) {
        out.copyWithin(base, other * BLOCK_SIZE, other * BLOCK_SIZE + BLOCK_SIZE);
        const fixIt = rng.chance(0.5);
        if (fixIt) {
          // make it look like it belongs there: its block number and checksum
          new DataView(out.buffer, out.byteOffset + base, BLOCK_SIZE).setBigUint64(8, BigInt(b), true);
          fix(out, b, kinds[other]!);
        }
        what.push(`swap b${other}->b${b}${fixIt ? '+fix' : ''}`);
      }
    } else if (r < 0.9) {
      out.fill(0, base, base + BLOCK_SIZE);
      what.push(`zero b${b}`);
    } else {
      const keep = rng.chance(0.3) ? rng.int(out.length) : rng.int(blocks + 1) * BLOCK_SIZE;
      out = out.slice(0, keep);
      what.push(`truncate ${keep}`);
    }
  }
  return { img: out, what: what.join('; ') };
}

function fix(img: Uint8Array, block: number, kind: BlockKind): void {
  if (kind === 'none' || (block + 1) * BLOCK_SIZE > img.length) return;
  try {
    refix(img, block, kind);
  } catch {
    // a block number that is no safe integer: leave the checksum as it is
  }
}

/** How a reader ended: fine, a coded error, or a bug (with its stack). */
export type Outcome = { r: 'ok' } | { r: 'coded'; code: string } | { r: 'bug'; error: string };

function outcome(err: unknown): Outcome {
  if (err instanceof ThinpoolError || err instanceof RangeErrorWithCode) return { r: 'coded', code: err.code };
  return { r: 'bug', error: (err as Error)?.stack ?? String(err) };
}

export interface CaseResult {
  what: string;
  open: Outcome;
  check: Outcome;
  /** Our checker's verdict when it ran: false when it found damage. */
  checkOk?: boolean;
  /** Leaks our checker found (not damage: thin_check 0.9 passes them, 1.x exits 64). */
  checkLeaks?: number;
  /** The image written for the oracle (thin_check 1.x runs later, several at once). */
  image?: string;
  /** thin_check 1.x's exit code, once run, and whether it reported leaks only. */
  oracle?: number;
  oracleLeaksOnly?: boolean;
}

/** Writes `img` to `path` sparsely (only nonzero blocks), sized like the image. */
export function writeSparse(path: string, img: Uint8Array): void {
  const fd = openSync(path, 'w', 0o600);
  try {
    ftruncateSync(fd, img.length);
    for (let off = 0; off < img.length; off += BLOCK_SIZE) {
      const chunk = img.subarray(off, Math.min(img.length, off + BLOCK_SIZE));
      if (chunk.some((x) => x !== 0)) writeSync(fd, chunk, 0, chunk.length, off);
    }
  } finally {
    closeSync(fd);
  }
}

/** Runs every reader over one mutated image; with `scratch` the image is also written there for the oracle. */
export async function runCase(img: Uint8Array, what: string, opts: { scratch?: string } = {}): Promise<CaseResult> {
  const res: CaseResult = { what, open: { r: 'ok' }, check: { r: 'ok' } };
  try {
    const md = await ThinMetadata.open(new FaultyBlockFile('fuzz', img), { readOnly: true });
    for (const held of [false, true]) {
      if (held && !(await md.heldSuperblock())) continue;
      const view = await md.view(held);
      let chars = 0;
      await dumpView(view, (s) => {
        chars += s.length;
      });
      await lsView(view);
    }
  } catch (err) {
    res.open = outcome(err);
  }
  try {
    const report = await checkMetadata(new FaultyBlockFile('fuzz', img));
    res.checkOk = report.ok;
    res.checkLeaks = report.summary.leaks;
  } catch (err) {
    res.check = outcome(err);
  }
  if (opts.scratch) {
    writeSparse(opts.scratch, img);
    res.image = opts.scratch;
  }
  return res;
}
