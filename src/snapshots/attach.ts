/**
 * What the snapshot layer needs from the host to hand out mountable devices: an attacher that
 * turns a thin device into a block device path. The daemon implements it (`src/serve/attach`:
 * kernel NBD, or nbdfuse + a loop device, through its own NBD socket); this layer only defines it.
 */

/** A device to attach. */
export interface AttachRequest {
  deviceId: number;
  /** The device's export name (its name, or `id:N`). */
  device: string;
  readOnly: boolean;
  /** Who holds the attachment (an attachment lasts until its last holder releases it). */
  holder?: string;
}

/** An attached device. */
export interface Attachment {
  readonly deviceId: number;
  /** The block device (e.g. /dev/loop3, /dev/nbd0), or a file for a rootless attacher. */
  readonly path: string;
  readonly readOnly: boolean;
  /** True while a file system on it is mounted (anywhere) or it is held open exclusively. */
  busy(): Promise<boolean>;
  /** Runs `fn` with a file system mounted on the device made consistent on disk (frozen), then thaws it. */
  quiesce<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * Releases this holder; the last one detaches the device. Resolves false when the device is
   * still busy: the attachment stays until nothing has the device open, then goes by itself
   * (calling again is harmless). `force` detaches at once (a mounted file system on it sees I/O
   * errors from then on).
   */
  release(opts?: { force?: boolean }): Promise<boolean>;
}

/** Attaches thin devices as block devices. */
export interface BlockAttacher {
  attach(req: AttachRequest): Promise<Attachment>;
  /** True while the device is attached by anyone. */
  held(deviceId: number): boolean;
  /** Finishes detaches the kernel held up earlier; returns the device ids released. */
  reap(): Promise<number[]>;
}
