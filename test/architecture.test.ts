/**
 * Keeps docs/ARCHITECTURE.md true: every relative import in src/, tools/ and bench/ follows the
 * layer table (lower layers never import upper ones: `thin` never imports `pool`, nothing below
 * `serve` imports `serve`, nbd knows only io, errors and units), and every source file belongs to a
 * layer of the table.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = new URL('../../', import.meta.url).pathname;

/** Layer of a file (relative to the repository root). */
function layer(rel: string): string {
  if (rel === 'src/errors.ts') return 'errors';
  if (rel === 'src/units.ts') return 'units';
  const m = /^src\/([^/]+)\//.exec(rel);
  if (m) return m[1]!;
  return rel.split('/')[0]!;
}

/** What each layer may import (besides itself). `snapshots` and `images` are the coming container layers. */
const ALLOWED: Record<string, string[]> = {
  errors: [],
  units: ['errors'],
  io: ['errors', 'units'],
  pdata: ['io', 'errors', 'units'],
  thin: ['pdata', 'io', 'errors', 'units'],
  pool: ['thin', 'pdata', 'io', 'errors', 'units'],
  snapshots: ['pool', 'thin', 'pdata', 'io', 'errors', 'units'],
  images: ['snapshots', 'pool', 'thin', 'pdata', 'io', 'errors', 'units'],
  nbd: ['io', 'errors', 'units'],
  serve: ['images', 'snapshots', 'pool', 'thin', 'nbd', 'io', 'errors', 'units'],
  tools: ['serve', 'images', 'snapshots', 'pool', 'thin', 'nbd', 'io', 'pdata', 'errors', 'units', 'bench'],
  // bench may use the test harnesses (a private containerd, OCI images, a snapshotter process).
  bench: ['serve', 'images', 'snapshots', 'pool', 'thin', 'nbd', 'io', 'pdata', 'errors', 'units', 'test'],
};

function files(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(join(ROOT, dir))) {
    const p = join(dir, name);
    if (statSync(join(ROOT, p)).isDirectory()) out.push(...files(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

test('imports follow the layer table of docs/ARCHITECTURE.md', () => {
  const bad: string[] = [];
  let edges = 0;
  for (const file of [...files('src'), ...files('tools'), ...files('bench')]) {
    const from = layer(file);
    const text = readFileSync(join(ROOT, file), 'utf8');
    for (const m of text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'/gm)) {
      const target = relative(ROOT, resolve(join(ROOT, dirname(file)), m[1]!)).replace(/\.js$/, '.ts');
      const to = layer(target);
      edges++;
      if (to === from) continue;
      if (!(ALLOWED[from] ?? []).includes(to)) bad.push(`${file} (${from}) imports ${target} (${to})`);
    }
  }
  assert.ok(edges > 50, 'found the imports');
  assert.equal(bad, []);
});

test('every source file is in a layer of the table', () => {
  const unknown = [...files('src'), ...files('tools'), ...files('bench')].filter((f) => !(layer(f) in ALLOWED));
  assert.equal(unknown, []);
});

test('the table itself keeps the order: thin below pool, serve above every storage layer', () => {
  assert.not.ok(ALLOWED.thin!.includes('pool'), 'thin never imports pool');
  for (const below of ['errors', 'units', 'io', 'pdata', 'thin', 'pool', 'snapshots', 'images', 'nbd']) {
    assert.not.ok(ALLOWED[below]!.includes('serve'), `${below} never imports serve`);
  }
  // No cycles: a layer never reaches itself through the table.
  const reach = (from: string, seen = new Set<string>()): Set<string> => {
    for (const to of ALLOWED[from] ?? []) if (!seen.has(to)) reach(to, seen.add(to));
    return seen;
  };
  for (const l of Object.keys(ALLOWED)) assert.not.ok(reach(l).has(l), `${l} reaches itself`);
});

test.run();
