/**
 * Out of data space (pool and host), metadata full, lock contention
 * between processes, takeover of a dead holder's lock, and catalog consistency after a crash at
 * every step of a commit.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { BusyError, NoSpaceError, ReadOnlyError } from '../../src/errors.js';
import { Pool } from '../../src/pool/pool.js';
import { GiB, KiB, MiB } from '../../src/units.js';
import { tempDir } from '../support/tmp.js';
import { isRoot, testIf } from '../support/oracles.js';
import { assertThinCheckClean, haveThinTools } from '../support/thin-oracle.js';

const POOL_JS = new URL('../../src/pool/pool.js', import.meta.url).pathname;

/** A child process that opens the pool (with an optional commit fault) and runs `script`. */
function child(dir: string, script: string): ChildProcess {
  const code = `
    const { Pool } = await import(${JSON.stringify(POOL_JS)});
    const dir = ${JSON.stringify(dir)};
    ${script}
  `;
  return spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
}

function waitFor(p: ChildProcess, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    const on = (d: Buffer) => {
      out += d;
      if (out.includes(text)) resolve();
    };
    p.stdout!.on('data', on);
    p.stderr!.on('data', (d) => (out += d));
    p.on('exit', (code) => (out.includes(text) ? resolve() : reject(new Error(`child exited ${code} before '${text}': ${out}`))));
  });
}

function exited(p: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) resolve(p.exitCode);
    else p.on('exit', (code) => resolve(code));
  });
}

test('out of data space: the failing write gets NoSpaceError, nothing is lost, provisioned blocks keep working', async () => {
  const dir = tempDir();
  const pool = await Pool.create({ dir, dataSize: 16 * 64 * KiB, autoExtend: false });
  try {
    await pool.createDevice('v', 64 * MiB);
    const v = pool.volume('v');
    const full = Buffer.alloc(16 * 64 * KiB, 0x5a);
    await v.write(0, full);
    let err: unknown;
    await v.write(32 * MiB, Buffer.from('x')).catch((e) => (err = e));
    assert.instance(err, NoSpaceError);
    assert.match(String((err as Error).message), /out of data space/);
    assert.is((err as NoSpaceError).exitCode, 4);
    assert.is(pool.mode, 'out-of-data-space');
    assert.ok((await v.read(0, full.length)).equals(full));
    await v.write(100, Buffer.from('still works'));
    assert.is((await v.read(100, 11)).toString(), 'still works');
    await v.discard(0, 64 * KiB);
    await pool.commit();
    await v.write(32 * MiB, Buffer.from('x'));
    await pool.extend({ dataSize: 32 * 64 * KiB });
    assert.is(pool.mode, 'rw');
  } finally {
    await pool.close();
  }
});

test('auto-extend raises the capacity under the low-water mark, up to its maximum', async () => {
  const dir = tempDir();
  const pool = await Pool.create({ dir, dataSize: 8 * MiB, lowWaterMark: 2 * MiB, autoExtendStep: 4 * MiB, autoExtendMax: 24 * MiB });
  try {
    await pool.createDevice('v', 64 * MiB);
    await pool.volume('v').write(0, Buffer.alloc(20 * MiB, 1));
    const s = await pool.status();
    assert.ok(s.dataBlocks.total * s.blockSize >= 20 * MiB && s.dataBlocks.total * s.blockSize <= 24 * MiB, `capacity ${s.dataBlocks.total}`);
    assert.is(statSync(join(dir, 'data')).size, s.dataBlocks.total * s.blockSize);
    let err: unknown;
    await pool.volume('v').write(30 * MiB, Buffer.alloc(8 * MiB, 2)).catch((e) => (err = e));
    assert.instance(err, NoSpaceError, 'stops at the maximum');
  } finally {
    await pool.close();
  }
});

testIf(test, isRoot, 'root needed to mount a small tmpfs')('host file system full: NoSpaceError naming it', async () => {
  const dir = tempDir();
  const mnt = join(dir, 'small');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]);
  try {
    const pool = await Pool.create({ dir: join(mnt, 'pool'), dataSize: GiB, metadataSize: 256 * KiB });
    try {
      await pool.createDevice('v', 512 * MiB);
      let err: unknown;
      for (let i = 0; i < 16 && !err; i++) await pool.volume('v').write(i * MiB, Buffer.alloc(MiB, 3)).catch((e) => (err = e));
      assert.instance(err, NoSpaceError);
      assert.match((err as Error).message, /host file system/);
      assert.match((err as Error).message, new RegExp(mnt));
      const status = await pool.status();
      assert.is(status.mode, 'rw', 'the pool itself is fine');
      assert.ok((await pool.volume('v').read(0, MiB)).every((x) => x === 3));
    } finally {
      await pool.close().catch(() => undefined);
    }
  } finally {
    execFileSync('umount', [mnt]);
  }
});

test('metadata full: the transaction is dropped, the pool turns read-only with needs_check set', async () => {
  const dir = tempDir();
  const pool = await Pool.create({ dir, dataSize: 4 * GiB, metadataSize: 256 * KiB, autoExtend: false });
  await pool.createDevice('v', 4 * GiB);
  await pool.volume('v').write(0, Buffer.from('committed'));
  await pool.commit();
  let err: unknown;
  for (let i = 1; i < 20000 && !err; i++) {
    await pool.volume('v').write(i * 64 * KiB * 7, Buffer.from('y')).catch((e) => (err = e));
  }
  assert.instance(err, NoSpaceError);
  assert.match((err as Error).message, /metadata device is full/);
  assert.is(pool.mode, 'ro');
  let ro: unknown;
  await pool.volume('v').write(0, Buffer.from('z')).catch((e) => (ro = e));
  assert.instance(ro, ReadOnlyError);
  await pool.close();
  const again = await Pool.open(dir);
  try {
    const s = await again.status();
    assert.ok(s.needsCheck, 'needs_check is on disk');
    assert.is(s.mode, 'ro');
    assert.is((await again.volume('v').read(0, 9)).toString(), 'committed');
    if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
    // the way back: a clean check clears needs_check, then the metadata can grow
    const report = await again.clearNeedsCheck();
    assert.ok(report.ok);
    assert.is(again.mode, 'rw');
    await again.extend({ metadataSize: 4 * MiB });
    for (let i = 1; i < 3000; i++) await again.volume('v').write(i * 64 * KiB * 7, Buffer.from('y'));
  } finally {
    await again.close();
  }
  const third = await Pool.open(dir);
  assert.not.ok((await third.status()).needsCheck);
  await third.close();
  if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
});

test('lock contention between processes, and takeover of a dead holder at once', async () => {
  const dir = tempDir();
  await (await Pool.create({ dir, dataSize: 64 * MiB })).close();
  const holder = child(dir, `const p = await Pool.open(dir); console.log('ready'); setInterval(() => {}, 1000);`);
  try {
    await waitFor(holder, 'ready');
    let err: unknown;
    await Pool.open(dir).then((p) => p.close(), (e) => (err = e));
    assert.instance(err, BusyError);
    assert.is((err as BusyError).exitCode, 5);
    assert.match((err as Error).message, new RegExp(`^Cannot open ${dir}: locked by pid ${holder.pid} on ${hostname()} since \\d{4}-`));
    holder.kill('SIGKILL');
    await exited(holder);
    const t0 = Date.now();
    const pool = await Pool.open(dir);
    assert.ok(Date.now() - t0 < 1000, 'taken over at once');
    assert.match(readFileSync(join(dir, 'lock'), 'utf8'), new RegExp(`^pid ${process.pid} `));
    await pool.close();
  } finally {
    holder.kill('SIGKILL');
  }
});

for (const point of ['metadata-written', 'catalog-written', 'superblock-written'] as const) {
  test(`a crash at '${point}' of a commit leaves metadata and catalog consistent`, async () => {
    const dir = tempDir();
    const pool = await Pool.create({ dir, dataSize: 64 * MiB });
    await pool.createDevice('keep', 4 * MiB);
    await pool.volume('keep').write(0, Buffer.from('kept'));
    await pool.close();
    // create (metadata + catalog), then rename (catalog only) and delete; die at the point
    for (const op of ['create', 'rename', 'delete']) {
      const script = `
        let armed = false;
        const p = await Pool.open(dir, { commitHook: (pt) => { if (armed && pt === ${JSON.stringify(point)}) process.kill(process.pid, 'SIGKILL'); } });
        armed = true;
        if (${JSON.stringify(op)} === 'create') await p.createDevice('new', 4 * 1024 * 1024);
        if (${JSON.stringify(op)} === 'rename') await p.rename('keep', 'renamed');
        if (${JSON.stringify(op)} === 'delete') await p.remove('keep');
        console.log('survived');
      `;
      const c = child(dir, script);
      let out = '';
      c.stdout!.on('data', (d) => (out += d));
      c.stderr!.on('data', (d) => (out += d));
      await exited(c);
      const reopened = await Pool.open(dir);
      try {
        const s = await reopened.status();
        assert.is(s.catalog, 'in-sync', `${op} at ${point}: ${out}`);
        const names = (await reopened.devices()).map((d) => d.name).sort();
        const ids = reopened.md.deviceIds();
        assert.is(names.length, ids.length);
        if (op === 'create') assert.ok(names.includes('new') === (point === 'superblock-written'), `${op} at ${point}: ${names}`);
        if (op === 'rename') {
          // a catalog-only commit writes no metadata: only 'catalog-written' is reached, after the new slot is durable
          assert.ok(names.includes('renamed'), `${op} at ${point}: ${names}`);
          await reopened.rename('renamed', 'keep');
          names[names.indexOf('renamed')] = 'keep';
        }
        if (op === 'delete') assert.ok(names.includes('keep') === (point !== 'superblock-written'), `${op} at ${point}: ${names}`);
        if (names.includes('keep')) assert.is((await reopened.volume('keep').read(0, 4)).toString(), 'kept');
        if (names.includes('new')) await reopened.remove('new');
        if (!names.includes('keep')) {
          await reopened.createDevice('keep', 4 * MiB);
          await reopened.volume('keep').write(0, Buffer.from('kept'));
        }
      } finally {
        await reopened.close();
      }
      if (haveThinTools()) await assertThinCheckClean(join(dir, 'metadata'));
    }
  });
}

test('a torn catalog write falls back to the other slot', async () => {
  const dir = tempDir();
  const pool = await Pool.create({ dir, dataSize: 64 * MiB });
  await pool.createDevice('a', MiB);
  await pool.close();
  const c = child(dir, `
    const p = await Pool.open(dir, { commitHook: (pt) => { if (pt === 'catalog-written') process.kill(process.pid, 'SIGKILL'); } });
    await p.createDevice('b', 1024 * 1024);
  `);
  await exited(c);
  // tear the newest slot as a crash in the middle of its write would
  const slots = [0, 1].map((i) => ({ i, gen: Number(readFileSync(join(dir, `catalog.${i}`), 'latin1').split(' ')[2]) }));
  const newest = slots.sort((x, y) => y.gen - x.gen)[0]!.i;
  const bytes = readFileSync(join(dir, `catalog.${newest}`));
  writeFileSync(join(dir, `catalog.${newest}`), bytes.subarray(0, bytes.length >> 1));
  const again = await Pool.open(dir);
  try {
    assert.equal((await again.devices()).map((d) => d.name), ['a']);
    assert.is((await again.status()).catalog, 'in-sync');
  } finally {
    await again.close();
  }
});

test.run();
