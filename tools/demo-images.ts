/**
 * The images-and-containers part of `thinpool demo` (root, busybox-static and the attach tools):
 * the seed's story told by thinpool alone. A busybox-static root file system becomes a one-layer
 * image; two containers of it run a command each (chroot into the mounted container, no
 * runtime); one adds `/tmp/newfile` with "Hello world", is committed as a new image, and
 * `image history` and `device ls` show the new layer's few blocks and everything else shared.
 * Everything it mounts is unmounted (the daemon it started releases its mounts when it stops).
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, chmod, copyFile, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { writeLayer } from '../src/images/layer-writer.js';
import { diffTrees } from '../src/images/tree-diff.js';
import { Pool } from '../src/pool/pool.js';
import { Daemon } from '../src/serve/daemon.js';
import { ensureBaseDevice } from '../src/snapshots/base-device.js';
import { GiB } from '../src/units.js';
import { containersTable } from './container.js';
import { devicesTable } from './device.js';
import { historyTable, imageResultText } from './image.js';
import { formatDuration, formatSize } from './output.js';

const run = promisify(execFile);

/** busybox applets the demo's image links (a shell and what the demo runs). */
const APPLETS = ['sh', 'ls', 'cat', 'echo', 'mkdir', 'rm', 'wc', 'uname', 'id', 'hostname', 'df', 'touch'];
/** The base file system of the demo's pool (the default is 10 GiB; smaller is quicker to make). */
const BASE_SIZE = 1 * GiB;

/** The first executable `name` on PATH (or the usual sbin dirs), else null. */
export async function findProgram(name: string): Promise<string | null> {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    if (await access(p, constants.X_OK).then(() => true, () => false)) return p;
  }
  return null;
}

/** Why the images part cannot run here (null: it can), and the busybox binary. */
export async function imagesDemoProbe(): Promise<{ skip: string | null; busybox: string | null }> {
  const busybox = (await findProgram('busybox')) ?? null;
  if (process.getuid?.() !== 0) return { skip: 'not root (containers are mounted: loop devices and mount need root)', busybox };
  for (const t of ['nbdfuse', 'losetup', 'mkfs.ext4', 'mount', 'chroot']) if (!(await findProgram(t))) return { skip: `${t} is not installed`, busybox };
  if (!busybox) return { skip: 'busybox is not installed (Debian: busybox-static)', busybox };
  const kind = await run('file', ['-L', busybox]).then((r) => r.stdout, () => '');
  if (kind && !/statically linked|static-pie/.test(kind)) return { skip: `${busybox} is not statically linked (Debian: busybox-static)`, busybox };
  return { skip: null, busybox };
}

/** A busybox-static root file system in `root`: /bin with the applet links, /etc, /tmp, /root. */
async function busyboxRootfs(root: string, busybox: string): Promise<number> {
  for (const d of ['bin', 'etc', 'root', 'proc', 'dev', 'sys']) await mkdir(join(root, d), { recursive: true });
  await copyFile(busybox, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) await symlink('busybox', join(root, 'bin', a));
  await writeFile(join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(root, 'etc', 'group'), 'root:x:0:\n');
  await writeFile(join(root, 'etc', 'hostname'), 'thinpool-demo\n');
  await mkdir(join(root, 'tmp'));
  await chmod(join(root, 'tmp'), 0o1777);
  return (await stat(join(root, 'bin', 'busybox'))).size;
}

/** Runs the images part; `say` prints a line, `cmd` a `$ thinpool ...` line. */
export async function runImagesDemo(busybox: string, say: (s?: string) => void, cmd: (s: string) => void, opts: { keep?: boolean } = {}): Promise<void> {
  const t0 = performance.now();
  const work = await mkdtemp(join(tmpdir(), 'thinpool-demo-images-'));
  const dir = join(work, 'pool');
  let daemon: Daemon | undefined;
  try {
    say('Images and containers, by thinpool alone (no container runtime): an image is a stack of committed');
    say('snapshots, one per layer; a container is a writable snapshot of the top layer, mounted as ext4.');
    say();
    cmd(`-p ${dir} pool create --data-size 4G`);
    const pool = await Pool.create({ dir, dataSize: 4 * GiB });
    // The file system every snapshot starts from, made once (its zeros take no pool blocks).
    await ensureBaseDevice(pool, { sizeBytes: BASE_SIZE, fs: 'ext4' });
    await pool.close();
    say(`    with its ${formatSize(BASE_SIZE)} ext4 base file system made once (the image commands make a 10 GiB one by default).`);
    cmd(`-p ${dir} serve &   # the demo runs the daemon in this process`);
    daemon = await Daemon.start({ dir });
    const svc = daemon.localService;
    const bs = (await svc.status()).blockSize;
    say(`    From now on every command shown is \`thinpool -p ${dir} ...\`.`);
    say();

    const rootfs = join(work, 'rootfs');
    const empty = join(work, 'empty');
    await mkdir(empty);
    const bbSize = await busyboxRootfs(rootfs, busybox);
    const tar = join(work, 'busybox.tar.gz');
    const layer = await writeLayer(await diffTrees(empty, rootfs), tar);
    say(`    A root file system: ${busybox} (${formatSize(bbSize)}, static) as /bin/busybox, ${APPLETS.length} applet links, /etc, /tmp;`);
    say(`    packed as ${tar} (${formatSize(layer.size)}, ${layer.entries} entries).`);
    cmd(`image import busybox ${tar}`);
    const imported = await svc.imageImport('busybox', tar);
    say(indent(imageResultText('imported', imported)));
    say();

    cmd('container create busybox --name web');
    const web = await svc.containerCreate('busybox', { name: 'web' });
    cmd('container create busybox --name db');
    const db = await svc.containerCreate('busybox', { name: 'db' });
    say(`    web = ${web.id}, db = ${db.id}: O(1) snapshots of the image's top layer.`);
    cmd('container mount web');
    const webRoot = (await svc.containerMount('web')).path;
    say(`    ${webRoot}`);
    cmd('container mount db');
    const dbRoot = (await svc.containerMount('db')).path;
    say(`    ${dbRoot}`);
    const chroot = (await findProgram('chroot'))!;
    const inside = async (root: string, script: string) => (await run(chroot, [root, '/bin/sh', '-c', script], { env: { PATH: '/bin' } })).stdout.trim();
    say(`$ chroot ${webRoot} /bin/sh -c 'echo "Hello world" > /tmp/newfile; uname -sm; ls /tmp'`);
    say(indent(await inside(webRoot, 'echo "Hello world" > /tmp/newfile; uname -sm; ls /tmp')));
    say(`$ chroot ${dbRoot} /bin/sh -c 'ls /tmp; echo db was here > /root/note; cat /etc/hostname'`);
    say(indent(await inside(dbRoot, 'ls /tmp; echo db was here > /root/note; cat /etc/hostname') || '(empty)'));
    const seen = await Promise.all([webRoot, dbRoot].map((r) => access(join(r, 'tmp', 'newfile')).then(() => 'has', () => 'has no')));
    say(`    Each container sees only its own writes: web ${seen[0]} /tmp/newfile, db ${seen[1]}.`);
    cmd('container umount web');
    await svc.containerUmount('web');
    cmd('container umount db');
    await svc.containerUmount('db');
    say();

    cmd('container diff web');
    say(indent((await svc.containerDiff('web')).map((c) => `${c.kind} ${c.path}`).join('\n')));
    const used0 = (await svc.status()).dataBlocks.used;
    cmd('container commit web hello');
    const committed = await svc.containerCommit('web', 'hello', {});
    const used1 = (await svc.status()).dataBlocks.used;
    say(indent(imageResultText('committed', committed)));
    cmd('image history hello');
    const history = await svc.imageHistory('hello');
    say(indent(historyTable(history, bs)));
    const top = history.find((h) => h.layer)!.layer!;
    const base = (await svc.imageHistory('busybox')).find((h) => h.layer)!.layer!;
    const lower = history.filter((h) => h.layer).at(-1)!.layer!;
    say(`    The new layer holds ${top.contentSize} bytes of content ("Hello world\\n", as docker history counts it) and ${top.exclusiveBlocks} pool blocks`);
    say(`    of ${formatSize(bs)} (ext4's own metadata for the new file included); the commit grew the pool by ${used1 - used0} blocks.`);
    say(`    Layer 1 is busybox's own: chain id ${lower.chainId === base.chainId ? 'the same' : 'DIFFERENT'} (${lower.chainId.slice(7, 19)}), no extra blocks.`);
    say();

    cmd('device ls');
    say(indent(devicesTable(await svc.devices(), bs)));
    say('    snap-* are the layers and containers (their records name the snapshot); SHARED is what they map in common.');
    cmd('container ls');
    say(indent(containersTable(await svc.containerList())));
    cmd('container rm db');
    const rmDb = await svc.containerRemove('db');
    say(`    freed ${rmDb.freedBlocks} blocks: only what db wrote.`);
    say();
    say(`images part done in ${formatDuration(performance.now() - t0)}${opts.keep ? `; its pool is kept in ${dir}` : ''}.`);
  } finally {
    // Stopping the daemon unmounts and releases every container it mounted.
    await daemon?.stop().catch(() => undefined);
    if (!opts.keep) await rm(work, { recursive: true, force: true });
  }
}

function indent(text: string): string {
  return text.replace(/\n$/, '').split('\n').map((l) => `    ${l}`).join('\n');
}
