/**
 * Records of attachments under `POOL/run/attach/`: one JSON file per attached device
 * (`<device id>.json`), written before each process or kernel object is made and updated after,
 * so a daemon that dies (even by SIGKILL) leaves a record of everything it had made for the
 * next start (or `thinpool pool cleanup`) to release.
 *
 * ```json
 * { "version": 1, "deviceId": 7, "device": "snap-7", "readOnly": false, "method": "loop",
 *   "daemonPid": 4242, "created": "2024-05-01T10:00:00.000Z",
 *   "nbdfuse": { "pid": 4250, "mountpoint": "POOL/run/attach/7.fuse", "file": "POOL/run/attach/7.fuse/dev" },
 *   "loop": "/dev/loop3", "path": "/dev/loop3",
 *   "mounts": [{ "dir": "/mnt/web", "fs": "ext4", "via": "kernel" }] }
 * ```
 *
 * `method`: `nbd` (kernel `/dev/nbdN` through nbd-client), `loop` (nbdfuse file + loop device),
 * `file` (nbdfuse file only: rootless, mounted with fuse2fs). `path` is what gets mounted.
 * `mounts` are the mounts `thinpool mount` made on it.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export type AttachMethod = 'nbd' | 'loop' | 'file';

export interface AttachMount {
  dir: string;
  fs: string;
  /** `kernel` (mount(8)) or `fuse2fs` (rootless). */
  via: 'kernel' | 'fuse2fs';
}

export interface AttachRecord {
  version: 1;
  deviceId: number;
  /** The NBD export (the device's name, or id:N). */
  device: string;
  readOnly: boolean;
  method: AttachMethod;
  /** The daemon that made the attachment. */
  daemonPid: number;
  created: string;
  nbdfuse?: { pid: number; mountpoint: string; file: string };
  loop?: string;
  nbd?: string;
  /** The block device (or file) to mount, once attached. */
  path?: string;
  mounts: AttachMount[];
}

/** `POOL/run/attach`. */
export function attachDir(poolDir: string): string {
  return join(poolDir, 'run', 'attach');
}

function recordPath(poolDir: string, deviceId: number): string {
  return join(attachDir(poolDir), `${deviceId}.json`);
}

/** Writes a record atomically (temporary file + rename). */
export async function writeAttachRecord(poolDir: string, rec: AttachRecord): Promise<void> {
  await mkdir(attachDir(poolDir), { recursive: true, mode: 0o700 });
  const p = recordPath(poolDir, rec.deviceId);
  const tmp = `${p}.tmp`;
  await writeFile(tmp, JSON.stringify(rec, null, 1) + '\n', { mode: 0o600 });
  await rename(tmp, p);
}

export async function removeAttachRecord(poolDir: string, deviceId: number): Promise<void> {
  await rm(recordPath(poolDir, deviceId), { force: true });
}

/** Every readable record (damaged files are skipped and reported through `bad`). */
export async function readAttachRecords(poolDir: string, bad?: (file: string) => void): Promise<AttachRecord[]> {
  let names: string[];
  try {
    names = await readdir(attachDir(poolDir));
  } catch {
    return [];
  }
  const out: AttachRecord[] = [];
  for (const n of names.filter((f) => /^\d+\.json$/.test(f)).sort((a, b) => parseInt(a) - parseInt(b))) {
    try {
      const r = JSON.parse(await readFile(join(attachDir(poolDir), n), 'utf8')) as AttachRecord;
      if (r.version === 1 && Number.isInteger(r.deviceId)) out.push({ ...r, mounts: r.mounts ?? [] });
      else bad?.(n);
    } catch {
      bad?.(n);
    }
  }
  return out;
}
