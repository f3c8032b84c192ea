/**
 * What the image commands need from the daemon to reach a snapshot's files: its device mounted
 * somewhere (and host directories bound into it, for volumes). The daemon implements it
 * (`src/serve/image-mounter.ts`: the device attached through its own NBD socket, then mounted by
 * the kernel, or by fuse2fs without root), and records every mount with the device's attachment
 * so a daemon that dies leaves nothing the next start cannot undo. This layer only defines it.
 */
import type { DeviceRecord } from '../pool/catalog-slots.js';

/** A mount made for the caller. */
export interface MountedTree {
  /** Where the file system (or the bound directory) is. */
  readonly dir: string;
  /** Unmounts it and drops its hold on the device; false when the device stays attached (used elsewhere). */
  release(): Promise<boolean>;
}

export interface FsMounter {
  /**
   * True when mounts outlive the command that asked for them (a daemon that keeps serving); a
   * daemon started for one command only cannot keep a container mounted.
   */
  readonly persistent: boolean;
  /** Mounts the file system on `dev` at `dir` (an empty directory); read-only when asked (ext4 `ro,noload`). */
  mount(dev: DeviceRecord, dir: string, opts: { readOnly: boolean }): Promise<MountedTree>;
  /** Binds the host directory `source` at `target` (inside a mount of `dev`), recorded with `dev`'s attachment. */
  bind(dev: DeviceRecord, source: string, target: string): Promise<MountedTree>;
  /** The directories where `dev` is mounted or bound through this mounter, in the order they were made. */
  mountsOf(dev: DeviceRecord): Promise<string[]>;
  /** Unmounts `dir` (a mount or bind of `dev` made earlier, also by an earlier command); false when the device stays attached. */
  unmount(dev: DeviceRecord, dir: string): Promise<boolean>;
}
