/**
 * Keeps docs/ARCHITECTURE.md true: every relative import in src/, tools/ and bench/ follows the
 * layer table (lower layers never import upper ones; nbd knows only errors and units).
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

const ALLOWED: Record<string, string[]> = {
  errors: [],
  units: ['errors'],
  io: ['errors', 'units'],
  pdata: ['io', 'errors', 'units'],
  thin: ['pdata', 'io', 'errors', 'units'],
  snapshots: ['thin', 'pdata', 'io', 'errors', 'units'],
  nbd: ['errors', 'units'],
  serve: ['snapshots', 'thin', 'nbd', 'io', 'errors', 'units'],
  // The file-system and format half of images; it will import the snapshot layer and the pool once they wire it.
  images: ['io', 'errors', 'units'],
  tools: ['serve', 'snapshots', 'thin', 'nbd', 'io', 'pdata', 'images', 'errors', 'units', 'bench'],
  // bench may use the test harnesses (a private containerd, OCI images, a snapshotter process).
  bench: ['serve', 'snapshots', 'thin', 'nbd', 'io', 'pdata', 'images', 'errors', 'units', 'test'],
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

test.run();
