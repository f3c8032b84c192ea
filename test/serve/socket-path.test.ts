/**
 * A socket path never costs the user a file: `serve --socket PATH` (and the NBD server and the
 * control socket under it) refuses a PATH holding a regular file, a directory or a symlink and
 * leaves it as it was, refuses a live socket, replaces only a stale socket, and at exit removes
 * only the socket it made (not a file put in its place meanwhile).
 *
 * Regression: `serve --socket PATH` used to unlink a regular file at PATH (it treated anything
 * that was not a live socket as stale), and then removed the socket at exit: the file was gone.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { MemoryExport } from '../../src/nbd/memory-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { StaticExportProvider } from '../../src/nbd/static-export-provider.js';
import { ControlServer } from '../../src/serve/control.js';
import { LocalPoolService } from '../../src/serve/local-pool-service.js';
import { Pool } from '../../src/pool/pool.js';
import { daemonRefuses, makePool, startDaemon } from '../support/daemon.js';
import { tempDir } from '../support/tmp.js';

const MiB = 1024 * 1024;
const provider = () => new StaticExportProvider([new MemoryExport({ name: 'disk', size: MiB })]);

test('NbdServer.listenUnix refuses a regular file, a directory and a symlink at the path and leaves them intact', async () => {
  const dir = tempDir('thinpool-sock-');
  const file = join(dir, 'precious.img');
  writeFileSync(file, 'precious bytes');
  const sub = join(dir, 'a-dir');
  mkdirSync(sub);
  const link = join(dir, 'link');
  symlinkSync(file, link);
  for (const path of [file, sub, link]) {
    const s = new NbdServer({ provider: provider() });
    const err = await s.listenUnix(path).then(() => undefined, (e: unknown) => e);
    await s.close();
    assert.ok(err, `${path} must be refused`);
    assert.is((err as { code?: string }).code, 'EEXIST', String(err));
    assert.match((err as Error).message, /^Cannot listen on .*: it exists and is (a regular file|a directory|a symbolic link)/);
  }
  assert.is(readFileSync(file, 'utf8'), 'precious bytes');
  assert.ok(lstatSync(sub).isDirectory());
  assert.ok(lstatSync(link).isSymbolicLink());
});

test('a stale socket is replaced; close removes only its own socket, not a file put at the path meanwhile', async () => {
  const dir = tempDir('thinpool-sock-');
  const path = join(dir, 'nbd.sock');
  // A stale socket: bound by a process that exited without closing it.
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.exit(0))`]);
  assert.ok(existsSync(path) && lstatSync(path).isSocket(), 'a stale socket file is there');
  const s = new NbdServer({ provider: provider() });
  await s.listenUnix(path);
  assert.ok(lstatSync(path).isSocket());
  // Someone replaces the socket with a file while the server runs: close must not delete it.
  rmSync(path);
  writeFileSync(path, 'not yours');
  await s.close();
  assert.is(readFileSync(path, 'utf8'), 'not yours');
});

test('the control socket: a regular file at POOL/control.sock is refused and kept', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: MiB }] });
  const path = join(dir, 'control.sock');
  writeFileSync(path, 'keep me');
  const pool = await Pool.open(dir);
  const control = new ControlServer(new LocalPoolService(pool));
  const err = await control.listen(path).then(() => undefined, (e: unknown) => e);
  await control.close();
  await pool.close();
  assert.is((err as { code?: string } | undefined)?.code, 'EEXIST', String(err));
  assert.is(readFileSync(path, 'utf8'), 'keep me');
});

test('serve --socket PATH on a regular file exits non-zero, names the file, keeps it and unlocks the pool', async () => {
  const dir = await makePool({ devices: [{ name: 'a', size: MiB }] });
  const victim = join(tempDir('thinpool-sock-'), 'disk.img');
  writeFileSync(victim, Buffer.alloc(8192, 0x5a));
  const r = await daemonRefuses({ dir, socket: victim });
  assert.ok(r.exit.code !== 0, `exit ${r.exit.code}`);
  assert.match(r.stderr, /cannot .*listen on .*disk\.img: it exists and is a regular file/i);
  assert.equal(readFileSync(victim), Buffer.alloc(8192, 0x5a), 'the file is untouched');
  // The pool was released: a daemon on a free path starts.
  const d = await startDaemon({ dir, socket: join(tempDir('thinpool-sock-'), 'ok.sock') });
  await d.stop();
});

test.run();
