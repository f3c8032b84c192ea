/**
 * The real Linux kernel as a peer. Pools the kernel wrote open in thinpool; pools
 * thinpool writes activate in the kernel's dm-thin-pool target (booted under qemu by
 * scripts/kernel-dm-thin.sh) and come back with the kernel's changes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, statSync, copyFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from '../../src/pool/pool.js';
import { GiB, KiB, MiB } from '../../src/units.js';
import { Rng, testSeed } from '../support/rng.js';
import { tempDir } from '../support/tmp.js';
import { testIf } from '../support/oracles.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';
import { fixtureCopy, readFixture } from '../support/vectors.js';
import { guestValues, haveKernelVm, kernelVmWhy, runInKernel } from '../support/kernel-vm.js';
import { cliJson, cliOk } from '../support/cli.js';

const seed = testSeed();
const vm = testIf(test, haveKernelVm(), kernelVmWhy);

async function sha256Of(pool: Pool, dev: string): Promise<string> {
  const v = pool.volume(dev);
  const h = createHash('sha256');
  const chunk = 16 * MiB;
  for (let off = 0; off < v.size; off += chunk) h.update(await v.read(off, Math.min(chunk, v.size - off)));
  return h.digest('hex');
}

test('vector 11, written by the kernel, opens: unnamed id:2..4, renamed and sized, same sha256 as the kernel read', async () => {
  const meta = fixtureCopy('11-kernel-snapshots.bin.gz');
  const data = fixtureCopy('11-kernel-snapshots.data.gz');
  const metaBefore = readFileSync(meta);
  const dir = join(tempDir(), 'pool');
  const pool = await Pool.adopt({ dir, metadata: meta, data });
  try {
    assert.equal(pool.md.deviceIds(), [2, 3, 4]);
    assert.equal((await pool.devices()).map((d) => [d.name, d.id]), [[null, 2], [null, 3], [null, 4]]);
    assert.match(pool.notices.join('\n'), /id:2, id:3, id:4/);
    const s = await pool.status();
    assert.is(s.catalog, 'reconciled');
    assert.is(s.transactionId, 7);
    for (const [id, name, size] of [[2, 't2', GiB], [3, 't3', GiB], [4, 't4', 2 * GiB]] as const) {
      await pool.rename(`id:${id}`, name);
      await pool.resize(name, size);
    }
    assert.ok(readFileSync(meta).equals(metaBefore), 'naming and sizing does not rewrite the metadata');
    const want = guestValues(readFixture('11-kernel-snapshots.sha256').toString(), 'sha256');
    for (const name of ['t2', 't3', 't4']) assert.is(await sha256Of(pool, name), want.get(name)!.split(' ')[0], name);
    await pool.snapshot('t3', 't3-snap');
    await pool.volume('t3-snap').write(5 * MiB + 3, Buffer.from('written by thinpool'));
    await pool.volume('t2').write(0, Buffer.alloc(200 * KiB, 9));
    await pool.commit();
    assert.is(await sha256Of(pool, 't3'), want.get('t3')!.split(' ')[0], 't3 unchanged by its snapshot');
  } finally {
    await pool.close();
  }
  if (haveThinTools()) await assertThinCheckClean(meta);
  const again = await Pool.open(dir);
  try {
    assert.is((await again.status()).catalog, 'in-sync');
    assert.equal((await again.devices()).map((d) => d.name), ['t2', 't3', 't4', 't3-snap']);
  } finally {
    await again.close();
  }
});

vm('round trip through the kernel: it reads our bytes, writes, snapshots, deletes; we read its changes', async () => {
  const rng = new Rng(seed);
  const dir = join(tempDir(), 'pool');
  const pool = await Pool.create({ dir, dataSize: 64 * MiB, metadataSize: 4 * MiB });
  const ours = new Map<string, string>();
  try {
    await pool.createDevice('alpha', 8 * MiB);
    await pool.createDevice('beta', 4 * MiB);
    for (const [dev, n] of [['alpha', 24], ['beta', 10]] as const) {
      for (let i = 0; i < n; i++) await pool.volume(dev).write(rng.int(pool.volume(dev).size - 5000), Buffer.from(rng.bytes(rng.range(1, 5000))));
    }
    await pool.snapshot('alpha', 'alpha-snap');
    await pool.volume('alpha-snap').write(100, Buffer.from('snapshot bytes'));
    for (const dev of ['alpha', 'beta', 'alpha-snap']) ours.set(dev, await sha256Of(pool, dev));
  } finally {
    await pool.close();
  }
  const ids = { alpha: 1, beta: 2, 'alpha-snap': 3 };
  const out = await runInKernel(join(dir, 'metadata'), join(dir, 'data'), `
    DS=$(blockdev --getsz /dev/vdb)
    dmsetup create pool --table "0 $DS thin-pool /dev/vda /dev/vdb 128 0"
    dmsetup mknodes
    mk() { dmsetup create t$1 --table "0 $2 thin /dev/mapper/pool $1"; dmsetup mknodes; }
    mk 1 16384; mk 2 8192; mk 3 16384
    for d in 1 2 3; do echo "sha256 $d $(sha256sum /dev/mapper/t$d | cut -d' ' -f1)"; done
    yes KERNEL-WROTE-THIS | head -c 65536 | dd of=/dev/mapper/t1 bs=65536 seek=5 conv=fsync 2>/dev/null
    dmsetup suspend t1; dmsetup message pool 0 "create_snap 4 1"; dmsetup resume t1
    mk 4 16384
    echo "sha256 4 $(sha256sum /dev/mapper/t4 | cut -d' ' -f1)"
    dmsetup remove t2
    dmsetup message pool 0 "delete 2"
    for d in 1 3 4; do dmsetup remove t$d; done
    dmsetup status pool
    dmsetup remove pool
    echo done
  `);
  assert.match(out, /\ndone/);
  const kernel = guestValues(out, 'sha256');
  for (const [dev, id] of Object.entries(ids)) assert.is(kernel.get(String(id)), ours.get(dev), `kernel read of ${dev} (id ${id})`);
  const back = await Pool.open(dir);
  try {
    assert.match(back.notices.join('\n'), /device beta \(id 2\) no longer exists/);
    assert.match(back.notices.join('\n'), /id:4/);
    const s = await back.status();
    assert.is(s.catalog, 'reconciled');
    assert.equal(s.outsideChanges?.dropped, [{ id: 2, name: 'beta' }]);
    assert.equal(s.outsideChanges?.unknown, [4]);
    assert.equal((await back.devices()).map((d) => d.name ?? `id:${d.id}`), ['alpha', 'alpha-snap', 'id:4']);
    const block = await back.volume('alpha').read(5 * 64 * KiB, 64 * KiB);
    assert.is(block.subarray(0, 18).toString(), 'KERNEL-WROTE-THIS\n');
    await back.resize('id:4', 8 * MiB);
    assert.is(await sha256Of(back, 'id:4'), kernel.get('4'));
    assert.is(await sha256Of(back, 'alpha-snap'), ours.get('alpha-snap'));
    await back.rename('id:4', 'kernel-snap');
    await back.volume('kernel-snap').write(0, Buffer.from('and thinpool wrote here'));
  } finally {
    await back.close();
  }
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

for (const [bs, skip] of [[256, false], [2048, false], [2048, true]] as const) {
  vm(`a kernel-made pool with ${bs * 512 / KiB} KiB blocks${skip ? ' and skip_block_zeroing' : ''} opens and serves the right bytes`, async () => {
    const dir = tempDir();
    const meta = join(dir, 'meta');
    const data = join(dir, 'data');
    writeFileSync(meta, '');
    truncateSync(meta, 4 * MiB);
    writeFileSync(data, '');
    truncateSync(data, 128 * MiB);
    const out = await runInKernel(meta, data, `
      DS=$(blockdev --getsz /dev/vdb)
      dmsetup create pool --table "0 $DS thin-pool /dev/vda /dev/vdb ${bs} 0 ${skip ? '1 skip_block_zeroing' : '0'}"
      dmsetup mknodes
      dmsetup message pool 0 "create_thin 1"
      dmsetup create t1 --table "0 65536 thin /dev/mapper/pool 1"; dmsetup mknodes
      printf "first write at 4k\\n" | dd of=/dev/mapper/t1 bs=4096 seek=1 conv=sync,fsync 2>/dev/null
      yes 0123456789abcdef | head -c 300000 | dd of=/dev/mapper/t1 bs=1 seek=5000000 conv=fsync 2>/dev/null
      printf "end" | dd of=/dev/mapper/t1 bs=1 seek=33554429 conv=fsync 2>/dev/null
      echo "sha256 1 $(sha256sum /dev/mapper/t1 | cut -d' ' -f1)"
      dmsetup status pool
      dmsetup remove t1; dmsetup remove pool
    `);
    const kernel = guestValues(out, 'sha256');
    const pool = await Pool.adopt({ dir: join(dir, 'pool'), metadata: meta, data });
    try {
      assert.is(pool.blockSize, bs * 512);
      assert.is((await pool.devices()).length, 1);
      assert.is(pool.deviceSize(1), 32 * MiB, 'unknown size: up to the highest mapped block');
      assert.is(await sha256Of(pool, 'id:1'), kernel.get('1'));
      assert.is((await pool.volume('id:1').read(4096, 17)).toString(), 'first write at 4k');
      const mid = await pool.volume('id:1').read(5_000_000, 16);
      assert.is(mid.toString(), '0123456789abcdef'.slice(0, 16));
    } finally {
      await pool.close();
    }
    if (haveThinTools()) await assertThinCheckClean(meta);
  });
}

test('thinpool pool adopt (CLI) reports the devices it found; status shows the reconciled catalog', async () => {
  const meta = fixtureCopy('11-kernel-snapshots.bin.gz');
  const data = fixtureCopy('11-kernel-snapshots.data.gz');
  const dir = join(tempDir(), 'adopted');
  const out = await cliOk(['-p', dir, 'pool', 'adopt', '--metadata', meta, '--data', data]);
  assert.match(out, /found id:2: 40 mapped blocks/);
  assert.match(out, /found id:4: 600 mapped blocks/);
  const s = await cliJson<{ catalog: string; outsideChanges: { unknown: number[] } }>(['-p', dir, 'pool', 'status', '--json']);
  assert.is(s.catalog, 'reconciled');
  assert.equal(s.outsideChanges.unknown, [2, 3, 4]);
  await cliOk(['-p', dir, 'device', 'rename', 'id:2', 'web']);
  const after = await cliJson<{ catalog: string }>(['-p', dir, 'pool', 'status', '--json']);
  assert.is(after.catalog, 'in-sync');
});

test('pool adopt takes over files without rewriting them until the first change', async () => {
  const meta = fixtureCopy('11-kernel-snapshots.bin.gz');
  const data = fixtureCopy('11-kernel-snapshots.data.gz');
  const before = { meta: readFileSync(meta), data: readFileSync(data) };
  const dir = join(tempDir(), 'adopted');
  let pool = await Pool.adopt({ dir, metadata: meta, data });
  await pool.volume('id:4').read(0, MiB);
  await pool.close();
  pool = await Pool.open(dir);
  await pool.status();
  await pool.close();
  assert.ok(readFileSync(meta).equals(before.meta), 'metadata untouched');
  assert.ok(readFileSync(data).equals(before.data), 'data untouched');
  pool = await Pool.open(dir);
  await pool.volume('id:4').write(0, Buffer.from('an in-place write changes no metadata'));
  await pool.snapshot('id:4', 'snap-of-4');
  await pool.close();
  assert.not.ok(readFileSync(meta).equals(before.meta), 'the first change commits into the adopted file');
  assert.ok(statSync(join(dir, 'metadata')).isFile());
  if (haveThinTools()) await assertThinCheckClean(meta);
  let err: unknown;
  const small = join(tempDir(), 'small-data');
  copyFileSync(data, small);
  truncateSync(small, MiB);
  await Pool.adopt({ dir: join(tempDir(), 'x'), metadata: fixtureCopy('11-kernel-snapshots.bin.gz'), data: small }).catch((e) => (err = e));
  assert.instance(err, RangeError);
});

test.run();
