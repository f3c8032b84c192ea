/**
 * Resizing a thin device (`thinpool device resize`): growing only changes its recorded size;
 * shrinking zeroes the tail of the new last block, unmaps every block past it and is refused
 * while an export client has the device open (NBD cannot tell a client its device shrank, so it
 * would go on reading and writing past the new end).
 */
import { BusyError } from '../errors.js';
import type { Catalog } from './catalog.js';
import type { DeviceRecord } from './catalog-slots.js';
import { checkDeviceSize } from './device-changes.js';
import type { MaintenanceHost } from './pool-maintenance.js';
import type { ThinVolume } from './thin-volume.js';

/** What a resize needs of its pool beyond the maintenance operations'. */
export interface ResizeHost extends MaintenanceHost {
  catalog: Catalog;
  record(dev: string): DeviceRecord;
  deviceSize(id: number): number;
  /** Export clients (and attachments) using device `id`. */
  users(id: number): number;
  volume(dev: string): ThinVolume;
  /** Tells the device's open volume its new state (size). */
  pushState(id: number): void;
}

/** Changes the size of device `dev` to `sizeBytes` (a multiple of 512) and commits. */
export async function resizeDevice(h: ResizeHost, dev: string, sizeBytes: number): Promise<void> {
  h.writable(`resize ${dev}`);
  checkDeviceSize(sizeBytes);
  const r = h.record(dev);
  const old = h.deviceSize(r.id);
  const refuseInUse = () => {
    const users = h.users(r.id);
    if (users) throw new BusyError(`Cannot shrink ${dev} from ${old} to ${sizeBytes} bytes: it is in use (${users} export client${users === 1 ? '' : 's'} connected, which cannot be told the new size); disconnect them first`, { id: r.id, users });
  };
  if (sizeBytes < old) {
    refuseInUse();
    const vol = h.volume(`id:${r.id}`);
    const bs = h.blockSize;
    const tailEnd = Math.min(old, Math.ceil(sizeBytes / bs) * bs);
    if (tailEnd > sizeBytes) await vol.writeZeroes(sizeBytes, tailEnd - sizeBytes, { noHole: false });
    await h.gate.exclusively(async () => {
      refuseInUse(); // a client may have attached while the tail was zeroed
      await h.guard(() => h.md.openDevice(r.id).removeRange(Math.ceil(sizeBytes / bs), Number.MAX_SAFE_INTEGER));
    });
  }
  await h.gate.exclusively(async () => {
    h.catalog.resize(r, sizeBytes);
    h.pushState(r.id);
    await h.commitLocked();
  });
}
