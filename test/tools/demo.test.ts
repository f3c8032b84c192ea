/**
 * `thinpool demo` (what `npm start` runs):
 *
 * - the block-level part exits 0 without outside tools, shows each step (ls with exclusive vs
 *   shared blocks, status, check, delta, snapshot vs copy timing), names what it skipped, removes
 *   its temp dir, and keeps the pool with --keep;
 * - as root with busybox-static and the attach tools, the whole demo (its time printed; the
 *   issue's 60 s is a figure for the README, not an assertion): a busybox
 *   image imported, two containers mounted and running a command each (each sees only its own
 *   write), the "Hello world" layer diffed and committed, `image history` showing 12 bytes of
 *   content and a handful of exclusive blocks with layer 1 the base image's own, `device ls`
 *   with the snapshots, a container removed; then the first-write table (overlayfs, the
 *   userspace copy-up and thinpool; copy-up copies the whole file, thinpool one block) and an
 *   SVG chart where it says; nothing it mounted, attached or made is left;
 * - as an unprivileged user (runuser -u nobody): the block-level parts and the comparison
 *   without overlayfs, and the skipped parts named with why.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cli, cliJson } from '../support/cli.js';
import { leftovers } from '../support/images-cli.js';
import { isRoot, run, testIf, which } from '../support/oracles.js';
import { tempDir } from '../support/tmp.js';

test('demo (block level): exit 0 in under 30 s, every step shown, what it skipped named, temp dir removed', async () => {
  const r = await cli(['demo', '--no-images', '--no-first-write'], { env: { PATH: '/usr/local/bin:/usr/bin:/bin', THINPOOL_TOOLS_1X: '/nonexistent' } });
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
    /^Skipped here: images and containers: --no-images; first-write comparison: --no-first-write\.$/m,
  ]) assert.match(out, re);
  const m = /removed (\/\S+)\.\n$/.exec(out);
  assert.ok(m, 'the last line names the removed dir');
  assert.not.ok(existsSync(m![1]!), `${m![1]} is gone`);
  assert.not.match(out, /\x1b/);
});

test('demo --dir --keep: the pool stays and opens with the CLI', async () => {
  const dir = join(tempDir('thinpool-cli-demo-'), 'pool');
  const r = await cli(['demo', '--dir', dir, '--keep', '--no-images', '--no-first-write']);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`pool kept in ${dir} \\(try: thinpool -p ${dir} device ls\\)\\.\\n$`));
  const ls = await cliJson<Array<{ name: string }>>(['device', 'ls', '-p', dir]);
  assert.equal(ls.map((d) => d.name), ['base', 'web', 'db']);
  const again = await cli(['demo', '--dir', dir, '--no-images', '--no-first-write']);
  assert.is(again.code, 2, 'a dir holding a pool is refused');
  assert.match(again.stderr, /^thinpool: cannot create a pool in .*: it already holds one/);
  assert.ok(existsSync(join(dir, 'metadata')), 'and left alone');
});

/** The first-write table's rows: size -> the cells after it. */
function firstWriteRows(out: string): Map<number, string[]> {
  const rows = new Map<number, string[]>();
  for (const m of out.matchAll(/^ {4}(\d+) MiB {2,}(.*)$/gm)) rows.set(Number(m[1]), m[2]!.trim().split(/ {2,}/));
  return rows;
}

const full = !isRoot ? 'not root' : ['busybox', 'nbdfuse', 'losetup', 'mkfs.ext4', 'chroot'].find((t) => !which(t)) ?? null;
testIf(test, full === null, full === 'not root' ? full : `${full} missing`)('demo as root: images, two containers, the Hello world layer, history and sharing, the first-write table and chart; nothing left', async () => {
  const chart = join(tempDir('thinpool-demo-chart-'), 'first-write.svg');
  const r = await cli(['demo', '--chart', chart], { timeoutMs: 180_000 });
  assert.is(r.code, 0, r.stderr + r.stdout);
  assert.is(r.stderr, '');
  console.log(`demo as root took ${(r.ms / 1000).toFixed(1)} s`);
  const out = r.stdout;
  const images = /-p (\/\S+\/pool) pool create/.exec(out)?.[1];
  assert.ok(images, 'the images pool is named');
  for (const re of [
    /^\$ thinpool image import busybox \/\S+busybox\.tar\.gz$/m,
    /^ +imported busybox \(manifest sha256:[0-9a-f]{64}\): 1 layer, 1 applied, 0 already in the pool$/m,
    /^\$ thinpool container create busybox --name web$/m,
    /^\$ chroot \S+ \/bin\/sh -c 'echo "Hello world" > \/tmp\/newfile; uname -sm; ls \/tmp'\n {4}Linux \S+\n {4}newfile$/m,
    /Each container sees only its own writes: web has \/tmp\/newfile, db has no\.$/m,
    /^\$ thinpool container diff web\n {4}C \/tmp\n {4}A \/tmp\/newfile$/m,
    /^ +committed hello \(manifest sha256:[0-9a-f]{64}\): 2 layers, 1 applied, 1 already in the pool$/m,
    /^ +LAYER +DIFF ID +CREATED +CREATED BY +SIZE +EXCLUSIVE \(POOL\)$/m,
    /^ +2 +[0-9a-f]{12} +\S+ +thinpool container commit web +12 B +[\d.]+ KiB \(\d+ blocks? of 64\.0 KiB\)$/m,
    /Layer 1 is busybox's own: chain id the same/,
    /^ +NAME +ID +SIZE +ORIGIN +MAPPED +EXCLUSIVE +SHARED +CTIME +STIME +SNAPSHOT$/m,
    /^ +snap-\d+ .* committed thinpool:sha256:[0-9a-f]{64}$/m,
    /^ +snap-\d+ .* active thinpool:[0-9a-f]{64}$/m,
    /^ +freed \d+ blocks: only what db wrote\.$/m,
    /^Nothing skipped\.$/m,
  ]) assert.match(out, re);
  const blocks = Number(/holds 12 bytes of content .* and (\d+) pool blocks/.exec(out)?.[1]);
  assert.ok(blocks >= 1 && blocks <= 16, `a handful of blocks: ${blocks}`);
  assert.match(out, new RegExp(`the commit grew the pool by ${blocks} blocks`));
  // The table: overlayfs, the userspace copy-up and thinpool at 1, 4, 16 and 64 MiB.
  assert.match(out, /^ +size +overlayfs \(copied\) +userspace copy-up \(copied\) +thinpool device \(copied\) +overlayfs \/ thinpool +userspace copy-up \/ thinpool$/m);
  const rows = firstWriteRows(out);
  assert.equal([...rows.keys()], [1, 4, 16, 64]);
  for (const [size, cells] of rows) {
    assert.is(cells.length, 5, cells.join(' | '));
    assert.match(cells[0]!, new RegExp(`\\(${size} MiB\\)$`), 'overlayfs copied the whole file');
    assert.match(cells[1]!, new RegExp(`\\(${size} MiB\\)$`), 'the userspace copy-up copied the whole file');
    assert.match(cells[2]!, /\(64 KiB\)$/, 'thinpool copied one block');
  }
  assert.match(out, new RegExp(`chart: ${chart} \\(comparison took`));
  assert.match(readFileSync(chart, 'utf8'), /^<svg[^>]*>[\s\S]*overlayfs[\s\S]*thinpool device[\s\S]*<\/svg>\s*$/);
  // Nothing left: the demo's dirs, mounts, loop devices, nbdfuse processes.
  assert.not.ok(existsSync(images!), `${images} is gone`);
  assert.equal(await leftovers(images!), []);
  const removed = /removed (\/\S+)\.\n$/.exec(out)?.[1];
  assert.ok(removed && !existsSync(removed));
  assert.not.match((await run('findmnt', ['-rn', '-o', 'TARGET'])).stdout, /thinpool-demo-/);
});

const rootless = !isRoot ? 'not root (runs the demo as nobody)' : !which('runuser') ? 'runuser missing' : null;
testIf(test, rootless === null, rootless ?? '')('demo as an unprivileged user: the block-level parts and the comparison without overlayfs; the skipped parts named', async () => {
  const dir = tempDir('thinpool-demo-nobody-');
  chmodSync(dir, 0o777);
  const chart = join(dir, 'first-write.svg');
  const r = await run('runuser', ['-u', 'nobody', '--', process.execPath, CLI, 'demo', '--chart', chart], { timeoutMs: 180_000, env: { ...process.env, TMPDIR: dir } });
  assert.is(r.code, 0, r.stderr + r.stdout);
  const out = r.stdout;
  assert.match(out, /^Skipped here: images and containers: not root \(containers are mounted: loop devices and mount need root\); overlayfs in the first-write comparison: not root \(overlayfs mounts need CAP_SYS_ADMIN\)\.$/m);
  assert.match(out, /^ +skipped overlayfs: not root/m);
  assert.match(out, /data blocks in use: 1045 -> 1046 \(\+1\)/);
  assert.match(out, /^ +size +userspace copy-up \(copied\) +thinpool device \(copied\) +userspace copy-up \/ thinpool$/m);
  const rows = firstWriteRows(out);
  assert.equal([...rows.keys()], [1, 4, 16, 64]);
  for (const [size, cells] of rows) assert.equal([cells[0]!.endsWith(`(${size} MiB)`), cells[1]!.endsWith('(64 KiB)')], [true, true], cells.join(' | '));
  assert.ok(existsSync(chart), 'the chart is written');
  assert.not.match(out, /^Images and containers/m);
});

test.run();
