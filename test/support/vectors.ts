/** The dm-thin vectors in test/fixtures/dm-thin: paths, gunzipped copies, stored oracle outputs. */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { tempDir } from './tmp.js';

export const FIXTURES = new URL('../../../test/fixtures/dm-thin/', import.meta.url).pathname;

let scratch: string | undefined;

/** Reads a fixture file, gunzipping `.gz` ones. */
export function readFixture(rel: string): Buffer {
  const p = join(FIXTURES, rel);
  if (existsSync(p)) return p.endsWith('.gz') ? gunzipSync(readFileSync(p)) : readFileSync(p);
  if (existsSync(p + '.gz')) return gunzipSync(readFileSync(p + '.gz'));
  throw new Error(`no fixture ${rel}`);
}

/** A writable copy of a fixture (gunzipped) in a temp dir; the original is never touched. */
export function fixtureCopy(rel: string, name = basename(rel).replace(/\.gz$/, '')): string {
  scratch ??= tempDir('thinpool-vectors-');
  const out = join(scratch, `${Math.random().toString(36).slice(2, 8)}-${name}`);
  writeFileSync(out, readFixture(rel));
  return out;
}

/** Top-level metadata vectors (01..11), by base name. */
export function topVectors(): string[] {
  return readdirSync(FIXTURES)
    .filter((f) => /^\d\d-.*\.bin(\.gz)?$/.test(f))
    .map((f) => f.replace(/\.bin(\.gz)?$/, ''))
    .sort();
}

/** Kernel-written metadata images (relative paths under kernel/), excluding deliberately damaged ones. */
export function kernelVectors(opts: { damaged?: boolean } = {}): string[] {
  const out: string[] = [];
  const root = join(FIXTURES, 'kernel');
  for (const dir of readdirSync(root).sort()) {
    const d = join(root, dir);
    if (!existsSync(d) || dir === 'guest') continue;
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const f of names.sort()) {
      if (!f.endsWith('.bin.gz')) continue;
      const damaged = dir === 'errors' && f !== 'base.bin.gz';
      if (damaged === !!opts.damaged) out.push(`kernel/${dir}/${f}`);
    }
  }
  return out;
}
