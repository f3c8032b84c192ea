/**
 * The daemon's attachments: thin devices made into block devices through the daemon's own NBD
 * socket, implementing `BlockAttacher` (src/snapshots) for the snapshotter and the
 * `thinpool mount` commands.
 *
 * - **nbd**: the kernel NBD client (`nbd-client -unix SOCK /dev/nbdN -N EXPORT`) when the
 *   `nbd` module is loaded;
 * - **loop**: otherwise `nbdfuse` exposes the export as a file under `POOL/run/attach/N.fuse/`
 *   and `losetup -f --show --direct-io=on` makes a loop device of it;
 * - **file**: for an unprivileged daemon, the nbdfuse file alone (mounted with fuse2fs).
 *
 * One attachment per device, shared by its holders (the snapshotter, each `thinpool mount`).
 * Every step is recorded first (`attach-records.ts`). While attached, the device is in use
 * (`pool.use`): nothing deletes it. Teardown goes loop/nbd -> FUSE -> nbdfuse -> record; a busy
 * device (mounted or opened exclusively anywhere) is not torn down unless forced, and a loop
 * device the kernel keeps (opened meanwhile) is finished later by {@link reap}.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { mkdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BusyError, IoError } from '../../errors.js';
import type { AttachRequest, Attachment, BlockAttacher } from '../../snapshots/attach.js';
import type { Pool } from '../../pool/pool.js';
import { type AttachMethod, type AttachMount, type AttachRecord, attachDir, removeAttachRecord, writeAttachRecord } from './attach-records.js';
import {
  blockDeviceBusy, flushBuffers, freeze, fuseUnmount, isMountpoint, kernelNbdAvailable, loopAttach, loopDetach, mountsOfBlockDevice,
  nbdConnect, nbdDisconnect, processMatches, runQuiet, sleep, thaw, waitExit,
} from './host-devices.js';

export interface AttachManagerOptions {
  /** The daemon's NBD unix socket. */
  nbdSocket: string;
  /** `auto` (default): nbd when the kernel module is there, else loop as root, file otherwise. */
  method?: 'auto' | AttachMethod;
  log?: (msg: string) => void;
}

interface Entry {
  rec: AttachRecord;
  holders: Set<string>;
  /** The pool's in-use mark for the attachment's lifetime. */
  unuse: () => void;
  /** Set once teardown began (loop detach asked). */
  tearing?: boolean;
  /** The last holder left while the device was busy: torn down once nothing has it open. */
  releasing?: boolean;
  /** The teardown in progress, if any. */
  teardownRunning?: Promise<boolean>;
}

/** How long a release waits out a transient opener (udev's blkid probe after a umount) before deferring. */
const BUSY_WAIT_MS = 2000;
/** How often deferred releases are retried. */
const RETRY_MS = 500;

/** What releasing stale attachments did. */
export interface CleanupReport {
  released: Array<{ deviceId: number; device: string; what: string[] }>;
  /** Things that could not be released (still mounted somewhere), with why. */
  leftovers: string[];
}

const isRoot = () => process.getuid?.() === 0;

function chooseMethod(m: AttachManagerOptions['method']): AttachMethod {
  if (m && m !== 'auto') return m;
  if (!isRoot()) return 'file';
  return kernelNbdAvailable() ? 'nbd' : 'loop';
}

export class AttachManager implements BlockAttacher {
  private readonly entries = new Map<number, Entry>();
  private readonly pending = new Map<number, Promise<Entry>>();
  private retryTimer: NodeJS.Timeout | undefined;
  readonly method: AttachMethod;
  private readonly log: (msg: string) => void;

  constructor(private readonly pool: Pool, private readonly opts: AttachManagerOptions) {
    this.method = chooseMethod(opts.method);
    this.log = opts.log ?? (() => undefined);
  }

  private get poolDir(): string {
    return this.pool.dir;
  }

  /** The current attachments' records. */
  list(): AttachRecord[] {
    return [...this.entries.values()].map((e) => structuredClone(e.rec));
  }

  /** The attachment of a device, if any. */
  get(deviceId: number): AttachRecord | undefined {
    const e = this.entries.get(deviceId);
    return e ? structuredClone(e.rec) : undefined;
  }

  /** True when the device is attached (by anyone). */
  held(deviceId: number): boolean {
    return this.entries.has(deviceId);
  }

  /** Attaches a device for `holder` (or adds the holder to its attachment). */
  async attach(req: AttachRequest): Promise<Attachment> {
    const holder = req.holder ?? 'snapshotter';
    let e = this.entries.get(req.deviceId);
    if (!e) {
      let p = this.pending.get(req.deviceId);
      if (!p) {
        p = this.make(req).finally(() => this.pending.delete(req.deviceId));
        this.pending.set(req.deviceId, p);
      }
      e = await p;
    }
    if (e.rec.readOnly !== req.readOnly) {
      throw new BusyError(`Cannot attach ${req.device} ${req.readOnly ? 'read-only' : 'read-write'}: it is attached ${e.rec.readOnly ? 'read-only' : 'read-write'} at ${e.rec.path}`, { device: req.device });
    }
    e.holders.add(holder);
    e.releasing = false; // a deferred release of it is off
    return this.handle(e, holder);
  }

  private handle(e: Entry, holder: string): Attachment {
    const id = e.rec.deviceId;
    return {
      deviceId: id,
      path: e.rec.path!,
      readOnly: e.rec.readOnly,
      busy: () => this.busy(id),
      quiesce: (fn) => this.quiesce(id, fn),
      release: (o) => this.release(id, holder, o),
    };
  }

  private async make(req: AttachRequest): Promise<Entry> {
    const rec: AttachRecord = {
      version: 1, deviceId: req.deviceId, device: req.device, readOnly: req.readOnly, method: this.method,
      daemonPid: process.pid, created: new Date().toISOString(), mounts: [],
    };
    const e: Entry = { rec, holders: new Set(), unuse: this.pool.use(req.deviceId) };
    this.entries.set(req.deviceId, e);
    try {
      await writeAttachRecord(this.poolDir, rec);
      if (this.method === 'nbd') {
        rec.nbd = await nbdConnect(this.opts.nbdSocket, req.device, req.readOnly);
        rec.path = rec.nbd;
      } else {
        const mountpoint = join(attachDir(this.poolDir), `${req.deviceId}.fuse`);
        await mkdir(mountpoint, { recursive: true });
        const file = join(mountpoint, 'dev');
        rec.nbdfuse = { pid: 0, mountpoint, file };
        rec.nbdfuse.pid = await this.startNbdfuse(req, mountpoint, file);
        await writeAttachRecord(this.poolDir, rec);
        if (this.method === 'loop') {
          rec.loop = await loopAttach(file, req.readOnly);
          rec.path = rec.loop;
        } else {
          rec.path = file;
        }
      }
      await writeAttachRecord(this.poolDir, rec);
      this.log(`attached ${req.device} (id ${req.deviceId}) at ${rec.path}${req.readOnly ? ' read-only' : ''}`);
      return e;
    } catch (err) {
      await this.teardown(e, true).catch(() => undefined);
      throw err;
    }
  }

  private async startNbdfuse(req: AttachRequest, mountpoint: string, file: string): Promise<number> {
    const logPath = join(attachDir(this.poolDir), `${req.deviceId}.log`);
    const pidFile = join(attachDir(this.poolDir), `${req.deviceId}.pid`);
    await rm(pidFile, { force: true });
    const uri = `nbd+unix:///${encodeURIComponent(req.device)}?socket=${encodeURIComponent(this.opts.nbdSocket)}`;
    const logFd = openSync(logPath, 'w', 0o600);
    let child;
    try {
      child = spawn('nbdfuse', [...(req.readOnly ? ['-r'] : []), '-P', pidFile, file, uri], { detached: true, stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    const exited = new Promise<string>((resolve) => {
      child.once('exit', (code, sig) => resolve(`exited ${code ?? sig}`));
      child.once('error', (err) => resolve(String(err)));
    });
    child.unref();
    const deadline = Date.now() + 15_000;
    let done: string | undefined;
    void exited.then((s) => (done = s));
    for (;;) {
      const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
      if (pid > 0 && (await isMountpoint(mountpoint))) return pid;
      if (done !== undefined || Date.now() > deadline) {
        const log = await readFile(logPath, 'utf8').catch(() => '');
        if (child.pid && done === undefined) process.kill(child.pid, 'SIGKILL');
        throw new IoError(`Cannot attach ${req.device}: nbdfuse ${done ?? 'did not come up in 15 s'}: ${log.trim()}`, { device: req.device });
      }
      await sleep(20);
    }
  }

  /** True when the attached device is mounted or held open exclusively (or has mounts `thinpool mount` made). */
  async busy(deviceId: number): Promise<boolean> {
    const e = this.entries.get(deviceId);
    if (!e) return false;
    for (const m of e.rec.mounts) if (await isMountpoint(m.dir)) return true;
    if (e.rec.method === 'file' || !e.rec.path) return false;
    return blockDeviceBusy(e.rec.path);
  }

  /**
   * Runs `fn` with the file system on the device made consistent on disk: frozen (FIFREEZE) where
   * it is mounted, else its buffers flushed; thawed afterwards.
   */
  async quiesce<T>(deviceId: number, fn: () => Promise<T>): Promise<T> {
    const e = this.entries.get(deviceId);
    if (!e?.rec.path || e.rec.method === 'file') return fn();
    const mounts = await mountsOfBlockDevice(e.rec.path).catch(() => [] as string[]);
    const frozen = await freeze(mounts);
    if (!frozen.length) await flushBuffers(e.rec.path);
    try {
      return await fn();
    } finally {
      await thaw(frozen);
    }
  }

  /**
   * Drops `holder`; the last one tears the attachment down. A device still open after a short
   * wait (mounted elsewhere; a prober such as udev's blkid right after a umount) resolves false:
   * the holder is gone all the same and the teardown follows by itself once nothing has the
   * device open (retried every half second, and by {@link reap}), unless a new holder attaches
   * it first. `force` detaches at once (a file system still mounted on it then gets I/O errors).
   */
  async release(deviceId: number, holder: string, opts: { force?: boolean } = {}): Promise<boolean> {
    const e = this.entries.get(deviceId);
    if (!e) return true;
    if (e.holders.size > 1 || (e.holders.size === 1 && !e.holders.has(holder))) {
      e.holders.delete(holder);
      return true;
    }
    if (!opts.force && (await this.stillBusy(deviceId, BUSY_WAIT_MS))) {
      // Still open (mounted elsewhere, or a slow prober): the holder goes now and the teardown
      // follows by itself once nothing has the device open, so a release is never lost.
      e.holders.delete(holder);
      e.releasing = true;
      this.scheduleRetries();
      return false;
    }
    const ok = await this.teardown(e, !!opts.force);
    if (ok) e.holders.clear();
    else this.scheduleRetries(); // the kernel kept the loop device: finish when it lets go
    return ok;
  }

  /** True when the device is still busy after waiting up to `waitMs` for it to become free. */
  private async stillBusy(deviceId: number, waitMs: number): Promise<boolean> {
    const deadline = Date.now() + waitMs;
    while (await this.busy(deviceId)) {
      if (Date.now() >= deadline) return true;
      await sleep(50);
    }
    return false;
  }

  /** Retries deferred releases until none is left. */
  private scheduleRetries(): void {
    if (this.retryTimer) return;
    let running = false;
    this.retryTimer = setInterval(() => {
      if (running) return;
      running = true;
      void this.retryReleases().finally(() => (running = false));
    }, RETRY_MS);
    this.retryTimer.unref();
  }

  private async retryReleases(): Promise<void> {
    const waiting = () => [...this.entries.values()].filter((e) => e.releasing || e.tearing);
    for (const e of waiting()) {
      if (e.releasing && !e.tearing) {
        if (e.holders.size || (await this.busy(e.rec.deviceId))) continue;
        if (!e.releasing || e.holders.size) continue; // re-attached meanwhile
      }
      const ok = await this.teardown(e, false).catch((err: unknown) => {
        this.log(`cannot release ${e.rec.device}: ${(err as Error).message}`);
        return false;
      });
      if (ok) e.releasing = false;
    }
    if (!waiting().length && this.retryTimer) {
      clearInterval(this.retryTimer);
      this.retryTimer = undefined;
    }
  }

  /** Records a mount `thinpool mount` made on the device's attachment. */
  async addMount(deviceId: number, m: AttachMount): Promise<void> {
    const e = this.entries.get(deviceId);
    if (!e) return;
    e.rec.mounts = e.rec.mounts.filter((x) => x.dir !== m.dir).concat(m);
    e.holders.add(`mount:${m.dir}`);
    await writeAttachRecord(this.poolDir, e.rec);
  }

  /** Forgets a mount (after `thinpool umount`) and releases its hold. */
  async removeMount(deviceId: number, dir: string): Promise<boolean> {
    const e = this.entries.get(deviceId);
    if (!e) return true;
    e.rec.mounts = e.rec.mounts.filter((x) => x.dir !== dir);
    await writeAttachRecord(this.poolDir, e.rec);
    return this.release(deviceId, `mount:${dir}`);
  }

  /**
   * Tears down what `e` holds; false when the kernel keeps the loop device (still open). One
   * teardown at a time per entry (a retry, reap and a release may race).
   */
  private teardown(e: Entry, force: boolean): Promise<boolean> {
    if (e.teardownRunning) return e.teardownRunning;
    const p = this.teardownNow(e, force).finally(() => {
      if (e.teardownRunning === p) e.teardownRunning = undefined;
    });
    e.teardownRunning = p;
    return p;
  }

  private async teardownNow(e: Entry, force: boolean): Promise<boolean> {
    const r = e.rec;
    e.tearing = true;
    if (r.nbd) await nbdDisconnect(r.nbd);
    if (r.loop && r.nbdfuse) {
      const gone = await loopDetach(r.loop, r.nbdfuse.file, force ? 500 : 3000);
      if (!gone && !force) return false;
      if (!gone) this.log(`${r.loop} (${r.device}) is still in use; it clears itself once closed, and reads and writes on it fail from now on`);
    }
    if (r.nbdfuse) {
      for (const m of r.mounts) if (m.via === 'fuse2fs') await fuseUnmount(m.dir, force);
      // A FUSE file system just unmounted from the file (fuse2fs) may take a moment to exit and close it.
      let unmounted = await fuseUnmount(r.nbdfuse.mountpoint, false);
      for (const deadline = Date.now() + 3000; !unmounted && Date.now() < deadline; ) {
        await sleep(50);
        unmounted = await fuseUnmount(r.nbdfuse.mountpoint, false);
      }
      if (!unmounted) {
        if (!force) return false;
        await fuseUnmount(r.nbdfuse.mountpoint, true);
      }
      if (r.nbdfuse.pid && !(await waitExit(r.nbdfuse.pid, 5000)) && (await processMatches(r.nbdfuse.pid, 'nbdfuse'))) {
        process.kill(r.nbdfuse.pid, 'SIGKILL');
        await waitExit(r.nbdfuse.pid, 2000);
      }
      await rmdir(r.nbdfuse.mountpoint).catch(() => undefined);
      await rm(join(attachDir(this.poolDir), `${r.deviceId}.pid`), { force: true });
      await rm(join(attachDir(this.poolDir), `${r.deviceId}.log`), { force: true });
    }
    e.unuse();
    // The NBD connections close asynchronously after nbdfuse exits: wait until the pool sees it.
    const deadline = Date.now() + 5000;
    while (this.pool.inUseById(r.deviceId) && Date.now() < deadline) await sleep(10);
    await removeAttachRecord(this.poolDir, r.deviceId);
    this.entries.delete(r.deviceId);
    this.log(`released ${r.device} (id ${r.deviceId})`);
    return true;
  }

  /**
   * Finishes teardowns the kernel held up (a loop device opened while it was being detached)
   * and returns the devices released.
   */
  async reap(): Promise<number[]> {
    const out: number[] = [];
    for (const e of [...this.entries.values()]) {
      if (!e.tearing && !(e.releasing && !e.holders.size && !(await this.busy(e.rec.deviceId)))) continue;
      if (await this.teardown(e, false)) {
        e.releasing = false;
        out.push(e.rec.deviceId);
      }
    }
    return out;
  }

  /** Releases every attachment (daemon stop); busy ones too when `force`. Returns the ones left. */
  async releaseAll(opts: { force?: boolean } = {}): Promise<AttachRecord[]> {
    if (this.retryTimer) clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    const left: AttachRecord[] = [];
    for (const e of [...this.entries.values()]) {
      // Mounts `thinpool mount` made are unmounted first: they would fail without the daemon.
      // Binds sit inside the mounts made before them: the last made goes first.
      for (const m of [...e.rec.mounts].reverse()) await unmountDir(m);
      const ok = await this.teardown(e, !!opts.force).catch((err) => {
        this.log(`cannot release ${e.rec.device}: ${(err as Error).message}`);
        return false;
      });
      if (!ok) left.push(structuredClone(e.rec));
    }
    return left;
  }
}

/** Unmounts a mount `thinpool mount` made (the kernel's or fuse2fs's). */
export async function unmountDir(m: AttachMount): Promise<boolean> {
  if (!(await isMountpoint(m.dir))) return true;
  if (m.via === 'fuse2fs') return fuseUnmount(m.dir);
  await runQuiet('umount', [m.dir]);
  return !(await isMountpoint(m.dir));
}

