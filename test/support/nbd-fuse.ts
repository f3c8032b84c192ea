/**
 * nbdfuse -> loop device -> ext4 -> mount, for tests (root only), with a teardown that always
 * runs in order (umount, losetup -d, fusermount3 -u, wait for nbdfuse) and tolerates any step
 * having failed or never happened.
 *
 * Everything here is asynchronous: the NBD server usually runs in the same process, so a
 * synchronous call touching the mount would block the server it is waiting on.
 */
import { spawn } from 'node:child_process';
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './oracles.js';
import { exited } from './child-exit.js';

export interface FuseExt4 {
  /** The loop device, e.g. /dev/loop3. */
  loop: string;
  /** Where the ext4 file system is mounted. */
  mnt: string;
  /** The file nbdfuse exposes (the export as one file). */
  file: string;
  /** Unmounts and mounts the file system again (so reads go through NBD). */
  remount(): Promise<void>;
  /** Unmounts, runs `fsck.ext4 -fn` on the loop device, mounts again; returns fsck's exit code and output. */
  fsck(): Promise<{ code: number; output: string }>;
}

async function must(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

async function isMounted(path: string): Promise<boolean> {
  return (await run('mountpoint', ['-q', path])).code === 0;
}


/**
 * Runs `fn` with an ext4 file system on the NBD export at `uri` (made fresh with mkfs.ext4
 * unless `opts.mkfs` is false), then tears everything down, also when `fn` or the setup throws.
 * @example await withFuseExt4(h.uri('disk'), h.dir, async ({ mnt, remount }) => { ... });
 */
export interface FuseExt4Options {
  /** Make a fresh file system with mkfs.ext4 (default true); false mounts the one on the export. */
  mkfs?: boolean;
  /** Read-only all the way: `nbdfuse -r`, `losetup -r`, `mount -o ro` (default false). */
  readOnly?: boolean;
}

export async function withFuseExt4(uri: string, dir: string, fn: (fs: FuseExt4) => Promise<void>, opts: FuseExt4Options = {}): Promise<void> {
  const fuseDir = join(dir, 'fuse');
  const mnt = join(dir, 'mnt');
  const file = join(fuseDir, 'dev');
  await mkdir(fuseDir, { recursive: true });
  await mkdir(mnt, { recursive: true });
  let loop = '';
  let stderr = '';
  const ro = !!opts.readOnly;
  const mountArgs = ro ? ['-o', 'ro'] : [];
  const child = spawn('nbdfuse', [...(ro ? ['-r'] : []), file, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.on('error', (err) => (stderr += String(err)));
  const teardown: string[] = [];
  try {
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (await access(file).then(() => true, () => false)) break;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nbdfuse did not come up: ${stderr.trim()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    loop = (await must('losetup', ['-f', '--show', '--direct-io=on', ...(ro ? ['-r'] : []), file])).trim();
    if (opts.mkfs ?? true) await must('mkfs.ext4', ['-q', '-F', loop], 120_000);
    await must('mount', [...mountArgs, loop, mnt]);
    const remount = async () => {
      await must('umount', [mnt]);
      await must('blockdev', ['--flushbufs', loop]);
      await must('mount', [...mountArgs, loop, mnt]);
    };
    const fsck = async () => {
      await must('umount', [mnt]);
      const r = await run('fsck.ext4', ['-fn', loop], { timeoutMs: 120_000 });
      await must('mount', [...mountArgs, loop, mnt]);
      return { code: r.code, output: r.stdout + r.stderr };
    };
    await fn({ loop, mnt, file, remount, fsck });
  } finally {
    for (let i = 0; i < 5 && (await isMounted(mnt)); i++) {
      const r = await run('umount', [mnt]);
      if (r.code !== 0) {
        teardown.push(`umount ${mnt}: ${r.stderr.trim()}`);
        await new Promise((res) => setTimeout(res, 200));
      }
    }
    if (await isMounted(mnt)) await run('umount', ['-l', mnt]);
    if (loop) {
      const r = await run('losetup', ['-d', loop]);
      if (r.code !== 0) teardown.push(`losetup -d ${loop}: ${r.stderr.trim()}`);
    }
    if (await isMounted(fuseDir)) {
      const r = await run('fusermount3', ['-u', fuseDir]);
      if (r.code !== 0) {
        teardown.push(`fusermount3 -u: ${r.stderr.trim()}`);
        await run('umount', ['-l', fuseDir]);
      }
    }
    if (!(await exited(child, 10_000)) && child.pid !== undefined) {
      teardown.push('nbdfuse did not exit after unmount; killed');
      child.kill('SIGKILL');
      await exited(child, 5000);
    }
    if (teardown.length) console.error(`fuse teardown: ${teardown.join('; ')}`);
  }
}
