/**
 * The daemon's {@link FsMounter} for the image commands: a device attached through the daemon's
 * own NBD socket ({@link AttachManager}, held as `mount:DIR` for each mount), its file system
 * mounted by the kernel (ext4 read-only as `ro,noload`, xfs always `nouuid`) or, for a daemon
 * that is not root, by fuse2fs; host directories bound in for volumes. Every mount is recorded
 * with the device's attachment (`POOL/run/attach/<id>.json`) before the call returns, so
 * `container umount` in a later command, the daemon's stop and the next start's cleanup of a
 * killed daemon all find it (binds are undone before the mount they sit in).
 */
import { resolve } from 'node:path';
import { BusyError, UsageError } from '../errors.js';
import type { FsMounter, MountedTree } from '../images/fs-mounter.js';
import type { DeviceRecord } from '../pool/catalog-slots.js';
import { type AttachManager, unmountDir } from './attach/attach-manager.js';
import type { AttachMount } from './attach/attach-records.js';
import { runChecked } from './attach/host-devices.js';
import { mountOptions } from './mounts.js';

export class DaemonFsMounter implements FsMounter {
  /**
   * @param persistent false for a daemon started for one command (its mounts end with it).
   */
  constructor(private readonly att: AttachManager, readonly persistent: boolean) {}

  async mount(dev: DeviceRecord, dirArg: string, opts: { readOnly: boolean }): Promise<MountedTree> {
    const dir = resolve(dirArg);
    const label = dev.name ?? `id:${dev.id}`;
    const holder = `mount:${dir}`;
    await this.att.attach({ deviceId: dev.id, device: label, readOnly: !!dev.readOnly, holder });
    try {
      const rec = this.att.get(dev.id)!;
      const fs = dev.fs ?? 'ext4';
      let m: AttachMount;
      if (rec.method === 'file') {
        if (!/^ext[234]$/.test(fs)) throw new UsageError(`Cannot mount ${label} without root: its ${fs} file system needs the kernel (fuse2fs mounts ext2/3/4 only)`, { device: label, fs });
        const o = ['fakeroot', ...(opts.readOnly ? ['ro'] : [])];
        await runChecked('fuse2fs', [rec.path!, dir, '-o', o.join(',')], `mount ${label} at ${dir} with fuse2fs`);
        m = { dir, fs, via: 'fuse2fs' };
      } else {
        const o = mountOptions(fs, opts.readOnly);
        await runChecked('mount', ['-t', fs, ...(o.length ? ['-o', o.join(',')] : []), rec.path!, dir], `mount ${label} at ${dir}`);
        m = { dir, fs, via: 'kernel' };
      }
      await this.att.addMount(dev.id, m);
    } catch (err) {
      await this.att.release(dev.id, holder).catch(() => undefined);
      throw err;
    }
    return { dir, release: () => this.unmount(dev, dir) };
  }

  async bind(dev: DeviceRecord, source: string, target: string): Promise<MountedTree> {
    if (!this.att.get(dev.id)) throw new UsageError(`Cannot bind ${source} into ${dev.name ?? `id:${dev.id}`}: the device is not mounted`);
    await runChecked('mount', ['--bind', source, target], `bind ${source} at ${target}`);
    await this.att.addMount(dev.id, { dir: target, fs: 'bind', via: 'kernel' });
    return { dir: target, release: () => this.unmount(dev, target) };
  }

  async mountsOf(dev: DeviceRecord): Promise<string[]> {
    return this.att.get(dev.id)?.mounts.map((m) => m.dir) ?? [];
  }

  async unmount(dev: DeviceRecord, dir: string): Promise<boolean> {
    const m = this.att.get(dev.id)?.mounts.find((x) => x.dir === dir) ?? { dir, fs: '', via: 'kernel' as const };
    if (!(await unmountDir(m))) throw new BusyError(`Cannot unmount ${dir}: it is busy (a process uses it)`, { dir });
    return this.att.removeMount(dev.id, dir);
  }
}
