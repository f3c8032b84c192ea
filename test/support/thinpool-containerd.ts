/**
 * Shared pieces of the containerd-on-thinpool tests: the thinpool CLI's views of the pool
 * (`device ls`, `pool status` as JSON, the devices carrying container snapshots), what attachments
 * leave behind, images built once per process, and a snapshotter + containerd stack started and
 * stopped by PID.
 */
import { join } from 'node:path';
import { buildOciImage, type OciImage } from './oci-image.js';
import { startContainerd, type Containerd } from './containerd.js';
import { cliJson } from './cli.js';
import { startSnapshotter, type SnapshotterHandle } from './snapshotter.js';
import { tempDir } from './tmp.js';

/** The proxy plugin's name in containerd's config. */
export const PLUGIN = 'thinpool';
export const MiB = 1024 * 1024;

export interface DeviceJson {
  name: string;
  id: number;
  sizeBytes: number;
  exclusiveBlocks: number;
  mappedBlocks: number;
  readOnly: boolean;
  snapshot?: { key: string; kind: string; parent: string | null };
  pendingRemoval?: string;
}

export const devices = (pool: string) => cliJson<DeviceJson[]>(['-p', pool, 'device', 'ls', '--json']);
export const status = (pool: string) => cliJson<{ blockSize: number; dataBlocks: { used: number }; catalog: string; transactionId: number }>(['-p', pool, 'pool', 'status', '--json']);
/** The devices carrying container snapshots, keyed by the name containerd shows (its key without `NS/N/`). */
export async function snapshotDevices(pool: string): Promise<Map<string, DeviceJson>> {
  const out = new Map<string, DeviceJson>();
  for (const d of await devices(pool)) if (d.snapshot) out.set(d.snapshot.key.replace(/^[^/]+\/\d+\//, ''), d);
  return out;
}

export async function until(what: string, cond: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export { leftovers } from './leftovers.js';

/**
 * containerd redials a proxy plugin with a backoff of at most 3 s and fails calls at once while
 * it waits: wait until a call that reaches the restarted snapshotter (a Prepare; `ls` need not
 * reach it when containerd knows no snapshot) succeeds.
 */
export async function reachable(ctd: Containerd): Promise<void> {
  let n = 0;
  await until('containerd reconnected to the snapshotter', async () => (await ctd.ctr(['snapshots', '--snapshotter', PLUGIN, 'prepare', `reach-${n++}`])).code === 0, 15_000);
  await ctd.ctrOk(['snapshots', '--snapshotter', PLUGIN, 'rm', `reach-${n - 1}`]);
}

const images = new Map<string, OciImage>();
export async function image(tag: string, layers: Parameters<typeof buildOciImage>[1]['layers']): Promise<OciImage> {
  let img = images.get(tag);
  if (!img) {
    img = await buildOciImage(tempDir('thinpool-ctd-img-'), { tag, layers, config: { env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin'], cmd: ['/bin/sh'] } });
    images.set(tag, img);
  }
  return img;
}
export const helloImage = () =>
  image('hello', [{ busybox: true }, { files: [{ path: '/data/hello.txt', content: 'hello from the image\n' }] }]);

/** Runs `fn` with a snapshotter on a new pool and a containerd using it; stops both (by PID). */
export async function withStack(fn: (s: { pool: string; snap: SnapshotterHandle; ctd: Containerd; dir: string }) => Promise<void>, opts: { keep?: boolean } = {}): Promise<string> {
  const dir = tempDir('thinpool-ctd-');
  const pool = join(dir, 'pool');
  const snap = await startSnapshotter({ dir: pool, address: join(dir, 'snapshotter.sock') });
  let ctd: Containerd | undefined;
  try {
    ctd = await startContainerd({ proxyPlugins: { [PLUGIN]: snap.address } });
    await fn({ pool, snap, ctd, dir });
  } finally {
    await ctd?.stop();
    if (!opts.keep) await snap.stop().catch(() => snap.kill());
  }
  return pool;
}
