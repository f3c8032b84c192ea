#!/usr/bin/env node
// Runs every compiled uvu test file (dist/test/**/*.test.js) in its own process, two at a time,
// and sums uvu's per-file counts. Ends with the plain line `N passed, N failed` that CI reads.
// Usage: node scripts/run-tests.mjs [substring-filter ...]
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { availableParallelism } from 'node:os';

const root = new URL('..', import.meta.url).pathname;
const dir = join(root, 'dist', 'test');
const filters = process.argv.slice(2);
const files = [];
(function walk(d) {
  for (const name of readdirSync(d).sort()) {
    const p = join(d, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.js') && (filters.length === 0 || filters.some((f) => p.includes(f)))) files.push(p);
  }
})(dir);

// Heavy files (real oracles, VMs) first so the two workers finish together.
const weight = (f) => (/kernel|nbd|pool|crash|oracle|cli/.test(f) ? 0 : 1);
files.sort((a, b) => weight(a) - weight(b));

const jobs = Number(process.env.THINPOOL_TEST_JOBS || Math.min(2, availableParallelism()));
let passed = 0, failed = 0, skipped = 0;
const failures = [];
const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');

function runOne(file) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--enable-source-maps', file], { cwd: root, env: { ...process.env, FORCE_COLOR: '0' } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code, signal) => {
      const text = strip(out);
      const num = (label) => {
        const all = [...text.matchAll(new RegExp(`^\\s*${label}:\\s+(\\d+)`, 'gm'))];
        return all.reduce((s, m) => s + Number(m[1]), 0);
      };
      let total = num('Total'), p = num('Passed'), s = num('Skipped');
      let f = Math.max(0, total - p); // uvu's Total leaves skipped tests out
      if (total === 0 && code !== 0) f = 1; // crashed before uvu could report
      if (code !== 0 && f === 0) f = 1;
      passed += p; failed += f; skipped += s;
      const rel = relative(root, file);
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      console.log(`${f ? 'FAIL' : 'ok  '} ${rel}  (${p} passed, ${f} failed, ${s} skipped, ${secs}s${signal ? ', ' + signal : ''})`);
      if (f) {
        failures.push(rel);
        console.log(text.split('\n').map((l) => '    ' + l).join('\n'));
      }
      resolve();
    });
  });
}

const queue = [...files];
await Promise.all(Array.from({ length: jobs }, async () => {
  while (queue.length) await runOne(queue.shift());
}));
if (failures.length) console.log(`failed files: ${failures.join(', ')}`);
console.log(`${skipped} skipped (tools missing or not root; see the lines above)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
