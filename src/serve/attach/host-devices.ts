/**
 * The host side of attachments: loop devices (`losetup`), the kernel NBD client (`nbd-client`),
 * FUSE mounts (`fusermount3`), whether a block device is busy, where it is mounted (in any
 * mount namespace), freezing a mounted file system, and processes by pid. Everything is
 * asynchronous: the NBD server these devices talk to usually runs in this same process.
 */
import { execFile } from 'node:child_process';
import { constants, existsSync } from 'node:fs';
import { open, readFile, readdir, readlink, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { IoError, NotFoundError } from '../../errors.js';

const PATH = `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin`;

export interface RunOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program and returns its exit code and output (never throws for a nonzero exit). */
export function runQuiet(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunOutput> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: { ...process.env, PATH }, timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new NotFoundError(`Cannot run ${cmd}: it is not installed`, { program: cmd }));
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs a program; a nonzero exit is an IoError naming `action`. */
export async function runChecked(cmd: string, args: string[], action: string, timeoutMs = 60_000): Promise<string> {
  const r = await runQuiet(cmd, args, timeoutMs);
  if (r.code !== 0) throw new IoError(`Cannot ${action}: ${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`, { program: cmd });
  return r.stdout;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * True when the block device is mounted (in any mount namespace) or held open exclusively:
 * an exclusive open (`O_EXCL` on a block device) fails with EBUSY then.
 */
export async function blockDeviceBusy(path: string): Promise<boolean> {
  try {
    const fh = await open(path, constants.O_RDONLY | constants.O_EXCL | constants.O_NONBLOCK);
    await fh.close();
    return false;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') return true;
    if (code === 'ENOENT' || code === 'ENXIO') return false;
    throw err;
  }
}

/** The loop device's backing file, or undefined when the loop is not set up. */
export async function loopBackingFile(loop: string): Promise<string | undefined> {
  try {
    return (await readFile(`/sys/block/${basename(loop)}/loop/backing_file`, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** Sets up a loop device over `file` (direct I/O, read-only when asked); returns /dev/loopN. */
export async function loopAttach(file: string, readOnly: boolean): Promise<string> {
  const out = await runChecked('losetup', ['-f', '--show', '--direct-io=on', ...(readOnly ? ['-r'] : []), file], `attach ${file} to a loop device`);
  const dev = out.trim();
  if (!/^\/dev\/loop\d+$/.test(dev)) throw new IoError(`Cannot attach ${file} to a loop device: losetup printed '${dev}'`);
  return dev;
}

/**
 * Detaches a loop device if it is still backed by `file` and waits for it to go. Returns true
 * when it is gone; false when the kernel keeps it (it is still open or mounted: losetup then
 * leaves it to clear itself once the last user closes it).
 */
export async function loopDetach(loop: string, file: string, waitMs = 3000): Promise<boolean> {
  if ((await loopBackingFile(loop)) !== file) return true;
  await runQuiet('losetup', ['-d', loop]);
  const deadline = Date.now() + waitMs;
  for (;;) {
    if ((await loopBackingFile(loop)) !== file) return true;
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
}

/** True when the kernel NBD client can be used here (module loaded, nbd-client installed). */
export function kernelNbdAvailable(): boolean {
  return existsSync('/sys/module/nbd') && existsSync('/dev/nbd0') && ['/usr/sbin/nbd-client', '/sbin/nbd-client', '/usr/bin/nbd-client'].some((p) => existsSync(p));
}

/** Connects a free /dev/nbdN to the export `name` of the NBD server on `socket`. */
export async function nbdConnect(socket: string, name: string, readOnly: boolean): Promise<string> {
  const devs = (await readdir('/sys/block')).filter((d) => /^nbd\d+$/.test(d)).sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const d of devs) {
    if (existsSync(`/sys/block/${d}/pid`)) continue; // connected
    const dev = `/dev/${d}`;
    const r = await runQuiet('nbd-client', ['-unix', socket, dev, '-N', name, ...(readOnly ? ['-readonly'] : [])]);
    if (r.code === 0) return dev;
  }
  throw new IoError(`Cannot attach ${name} through the kernel NBD client: no free /dev/nbdN`);
}

/** Disconnects /dev/nbdN. */
export async function nbdDisconnect(dev: string): Promise<void> {
  if (!existsSync(`/sys/block/${basename(dev)}/pid`)) return;
  await runChecked('nbd-client', ['-d', dev], `disconnect ${dev}`);
}

/** Lines of a mountinfo file as { id, majmin, mountpoint, fstype, source }. */
function parseMountinfo(text: string): Array<{ majmin: string; mountpoint: string; fstype: string; source: string }> {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const f = left!.split(' ');
    const r = (right ?? '').split(' ');
    const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({ majmin: f[2]!, mountpoint: unescape(f[4]!), fstype: r[0] ?? '', source: unescape(r[1] ?? '') });
  }
  return out;
}

/** Whether `dir` is a mount point in this process's mount namespace. */
export async function isMountpoint(dir: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return parseMountinfo(text).some((m) => m.mountpoint === dir);
}

/** The mount of `dir` in this namespace (last one wins, as the kernel stacks them). */
export async function mountAt(dir: string): Promise<{ fstype: string; source: string; majmin: string } | undefined> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const ms = parseMountinfo(text).filter((m) => m.mountpoint === dir);
  return ms[ms.length - 1];
}

/**
 * Where a block device is mounted, in every mount namespace: paths usable from this process
 * (`/proc/PID/root/MOUNTPOINT` for other namespaces).
 */
export async function mountsOfBlockDevice(path: string): Promise<string[]> {
  const st = await stat(path);
  const majmin = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
  const seen = new Set<string>();
  const out: string[] = [];
  const self = await readlink('/proc/self/ns/mnt').catch(() => '');
  const pids = ['self', ...(await readdir('/proc')).filter((p) => /^\d+$/.test(p))];
  for (const pid of pids) {
    let ns: string;
    try {
      ns = pid === 'self' ? self : await readlink(`/proc/${pid}/ns/mnt`);
    } catch {
      continue;
    }
    if (seen.has(ns)) continue;
    seen.add(ns);
    let text: string;
    try {
      text = await readFile(`/proc/${pid}/mountinfo`, 'utf8');
    } catch {
      continue;
    }
    for (const m of parseMountinfo(text)) {
      if (m.majmin !== majmin) continue;
      out.push(pid === 'self' || ns === self ? m.mountpoint : `/proc/${pid}/root${m.mountpoint}`);
    }
  }
  return out;
}

/** Freezes the file systems mounted at `paths` (FIFREEZE: consistent on disk, journal flushed). */
export async function freeze(paths: readonly string[]): Promise<string[]> {
  const frozen: string[] = [];
  for (const p of paths) {
    const r = await runQuiet('fsfreeze', ['-f', p]);
    if (r.code === 0) {
      frozen.push(p);
      break; // one mount of a file system freezes it everywhere
    }
  }
  return frozen;
}

export async function thaw(paths: readonly string[]): Promise<void> {
  for (const p of paths) await runQuiet('fsfreeze', ['-u', p]);
}

/** Flushes a block device's buffers (BLKFLSBUF: a mounted file system is synced). */
export async function flushBuffers(path: string): Promise<void> {
  await runQuiet('blockdev', ['--flushbufs', path]);
}

/** True when process `pid` exists and its command line contains `match`. */
export async function processMatches(pid: number, match: string): Promise<boolean> {
  try {
    const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').join(' ');
    return cmd.includes(match);
  } catch {
    return false;
  }
}

/** True when a process with this pid exists (and is not a zombie). */
export async function processAlive(pid: number): Promise<boolean> {
  try {
    const st = await readFile(`/proc/${pid}/stat`, 'utf8');
    return !/\) Z /.test(st);
  } catch {
    return false;
  }
}

/** Waits until `pid` has exited (or is a zombie); true when it did within `ms`. */
export async function waitExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (await processAlive(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
  return true;
}

/** Unmounts a FUSE mount (lazily with `lazy`); true when it is no longer mounted. */
export async function fuseUnmount(dir: string, lazy = false): Promise<boolean> {
  if (!(await isMountpoint(dir))) return true;
  const r = await runQuiet('fusermount3', ['-u', ...(lazy ? ['-z'] : []), dir]);
  if (r.code !== 0 && process.getuid?.() === 0) await runQuiet('umount', [...(lazy ? ['-l'] : []), dir]);
  return !(await isMountpoint(dir));
}
