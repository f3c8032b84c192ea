/**
 * `thinpool demo` (what `npm start` runs): exits 0 well under 30 s without root or outside tools,
 * shows each step (ls with exclusive vs shared blocks, status, check, delta, snapshot vs copy
 * timing, the line about what comes later), removes its temp dir, and keeps the pool with --keep.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { cli, cliJson } from '../support/cli.js';
import { tempDir } from '../support/tmp.js';

test('demo: exit 0 in under 30 s, every step shown, temp dir removed', async () => {
  const r = await cli(['demo'], { env: { PATH: '/usr/local/bin:/usr/bin:/bin', THINPOOL_TOOLS_1X: '/nonexistent' } });
  assert.is(r.code, 0, r.stderr + r.stdout);
  assert.ok(r.ms < 30_000, `took ${r.ms} ms`);
  assert.is(r.stderr, '');
  const out = r.stdout;
  for (const re of [
    /^\$ thinpool pool create --data-size 4G$/m,
    /^\$ thinpool device create base --size 1G$/m,
    /base maps 1045 blocks \(65\.3 MiB\) of its 1 GiB/,
    /The snapshot took \d+ µs, commit included/,
    /data blocks in use: 1045 -> 1046 \(\+1\): only the 64\.0 KiB block holding that byte was copied/,
    /^ +NAME +ID +SIZE +ORIGIN +MAPPED +EXCLUSIVE +SHARED +CTIME +STIME$/m,
    /^ +web +2 +1\.0 GiB +base +65\.4 MiB +192\.0 KiB +65\.2 MiB /m,
    /^ +db +3 +1\.0 GiB +base +65\.3 MiB +128\.0 KiB +65\.2 MiB /m,
    /^ +data: +65\.6 MiB of 4\.0 GiB \(1\.6%, 1050\/65536 blocks\)$/m,
    /^ +ok: 0 damage, 0 leak\(s\), 0 warning\(s\)$/m,
    /^ +base \(id 1\) -> web \(id 2\): 3 changed ranges, 192\.0 KiB \(3 blocks of 64\.0 KiB\)$/m,
    /snapshot: \d+ µs +copy: \d+ µs .* -> the snapshot is \d+x faster/,
    /^Not shown yet: the CoW-vs-copy-up benchmark comparison/m,
  ]) assert.match(out, re);
  const m = /removed (\/\S+)\.\n$/.exec(out);
  assert.ok(m, 'the last line names the removed dir');
  assert.not.ok(existsSync(m![1]!), `${m![1]} is gone`);
  assert.not.match(out, /\x1b/);
});

test('demo --dir --keep: the pool stays and opens with the CLI', async () => {
  const dir = join(tempDir('thinpool-cli-demo-'), 'pool');
  const r = await cli(['demo', '--dir', dir, '--keep']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`pool kept in ${dir} \\(try: thinpool -p ${dir} device ls\\)\\.\\n$`));
  const ls = await cliJson<Array<{ name: string }>>(['device', 'ls', '-p', dir]);
  assert.equal(ls.map((d) => d.name), ['base', 'web', 'db']);
  const again = await cli(['demo', '--dir', dir]);
  assert.is(again.code, 2, 'a dir holding a pool is refused');
  assert.match(again.stderr, /^thinpool: cannot create a pool in .*: it already holds one/);
  assert.ok(existsSync(join(dir, 'metadata')), 'and left alone');
});

test.run();
