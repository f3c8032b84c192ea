/**
 * scripts/install-thin-tools-1x.sh takes its Debian mirror only from the machine's apt sources:
 * deb822 `.sources` stanzas (Types with deb, Enabled: no skipped, the security archive passed
 * over) and one-line `deb` entries in sources.list and sources.list.d/*.list (with [options]);
 * with none configured it fails with a message saying what to configure, and names no host.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

const SCRIPT = fileURLToPath(new URL('../../../scripts/install-thin-tools-1x.sh', import.meta.url));

/** An apt configuration directory holding `files` (relative path -> contents). */
function aptDir(files: Record<string, string>): string {
  const dir = tempDir();
  mkdirSync(join(dir, 'sources.list.d'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

function mirrorOf(dir: string) {
  return run('bash', [SCRIPT, '--print-mirror'], { env: { ...process.env, APT_SOURCES_DIR: dir } });
}

test('deb822: the first enabled deb stanza with a /debian URI', async () => {
  const dir = aptDir({
    'sources.list.d/a.sources': [
      'Types: deb',
      'URIs: http://security.example.org/debian-security',
      'Suites: bookworm-security',
      '',
      'Types: deb',
      'Enabled: no',
      'URIs: http://off.example.org/debian',
      '',
      '# comment',
      'Types: deb-src deb',
      'URIs: http://one.example.org/mirror/debian/ http://two.example.org/debian',
      'Suites: bookworm',
      '',
    ].join('\n'),
  });
  const r = await mirrorOf(dir);
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, 'http://one.example.org/mirror/debian/\n');
});

test('one-line lists: sources.list (with [options]) and sources.list.d/*.list; deb-src ignored', async () => {
  const dir = aptDir({
    'sources.list': 'deb-src http://src.example.org/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] https://list.example.org/debian bookworm main\n',
  });
  assert.is((await mirrorOf(dir)).stdout, 'https://list.example.org/debian\n');
  const dir2 = aptDir({ 'sources.list.d/x.list': '# nothing\ndeb http://dotlist.example.org/debian bookworm main\n' });
  assert.is((await mirrorOf(dir2)).stdout, 'http://dotlist.example.org/debian\n');
});

test('no Debian mirror configured: a clear failure, no host made up', async () => {
  const dir = aptDir({ 'sources.list.d/other.list': 'deb https://packages.example.org/node stable main\n' });
  const r = await mirrorOf(dir);
  assert.is(r.code, 1);
  assert.is(r.stdout, '');
  assert.match(r.stderr, /^install-thin-tools-1x: cannot find a Debian mirror in .*: configure one for apt/);
});

test.run();
