/**
 * Builds OCI images for tests with `umoci` (as root): a layout directory that `skopeo inspect
 * oci:DIR:TAG` reads, and an OCI archive (the layout as a tar) that `ctr images import` takes.
 *
 * Each layer is described by what changes in the root file system: paths removed (umoci writes
 * whiteouts), busybox-static added (`/bin/busybox` and every applet as a symlink to it), files,
 * directories, symlinks and hardlinks with modes, owners and xattrs. The layers are made by
 * `umoci init` + `umoci new`, one `umoci unpack` into a bundle, then per layer: change the bundle's
 * rootfs, `umoci repack --refresh-bundle`; finally `umoci config` and `umoci gc`.
 *
 * Without root `umoci unpack` cannot set owners: {@link ociImageUnavailable} then names the
 * reason and tests register as skipped; {@link buildOciImage} throws it.
 *
 * @example
 * const img = await buildOciImage(dir, {
 *   tag: 'v1',
 *   layers: [{ busybox: true }, { files: [{ path: '/data/hello.txt', content: 'hello\n' }] }],
 *   config: { cmd: ['/bin/sh'] },
 * });
 * await ctr(['images', 'import', img.archive]);            // containerd names it img.name
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, lchown, link, lstat, mkdir, open, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { isRoot, run, which } from './oracles.js';

/** Where Debian's busybox-static puts its binary. */
export const BUSYBOX_STATIC = '/bin/busybox';

/** One entry to create in a layer. Parent directories are created as needed (0755, root). */
export interface FileSpec {
  /** Absolute path inside the image, e.g. `/etc/motd`. */
  path: string;
  /** Default `'file'`. */
  type?: 'file' | 'dir' | 'symlink' | 'hardlink';
  /**
   * File content. With `size` as well, the content is repeated (and cut) to fill `size` bytes,
   * e.g. `{ content: 'abcdefgh', size: 64 * MiB }` for a patterned 64 MiB file.
   */
  content?: string | Uint8Array;
  /** File length in bytes; without `content` the file is sparse (all zeros, no data written). */
  size?: number;
  /** Permission bits (including setuid/setgid/sticky); default 0o644 for files, 0o755 for dirs. */
  mode?: number;
  /** Owner; default 0 (root). */
  uid?: number;
  gid?: number;
  /** Symlink: the link's text. Hardlink: absolute path (inside the image) of an existing file. */
  target?: string;
  /** Extended attributes (e.g. `{ 'user.note': 'x' }`), set with setfattr. */
  xattrs?: Record<string, string | Uint8Array>;
}

/** What one layer changes, applied in this order: `remove`, `busybox`, `files`. */
export interface LayerSpec {
  /** Paths (absolute inside the image) deleted with everything below them. */
  remove?: string[];
  /** Add busybox-static: `/bin/busybox` and each applet (`busybox --list-full`) as a symlink to it. */
  busybox?: boolean;
  files?: FileSpec[];
}

/** Image configuration (the OCI config's `config` object). */
export interface ImageConfig {
  cmd?: string[];
  entrypoint?: string[];
  /** `KEY=VALUE` entries. */
  env?: string[];
  workdir?: string;
  user?: string;
  labels?: Record<string, string>;
}

export interface OciImageSpec {
  /** Tag of the image in the layout (`org.opencontainers.image.ref.name`), e.g. `v1`. */
  tag: string;
  /**
   * Full reference containerd gives the image on `ctr images import` (the index annotation
   * `io.containerd.image.name`); default `localhost/thinpool-test:TAG`.
   */
  name?: string;
  /** Layers, lowest first (at least one). */
  layers: LayerSpec[];
  config?: ImageConfig;
}

export interface OciImage {
  /** OCI image layout directory (`skopeo inspect oci:LAYOUT:TAG`). */
  layout: string;
  /** The layout as a tar (OCI archive): `ctr images import ARCHIVE`. */
  archive: string;
  tag: string;
  /** The reference `ctr images import` creates. */
  name: string;
  /** Digest of the image manifest. */
  manifest: string;
  /** Digest of the image config blob. */
  config: string;
  /** Digests of the layer blobs (gzip tars), lowest first. */
  layers: string[];
  /** Digests of the uncompressed layers (the config's `rootfs.diff_ids`), lowest first. */
  diffIds: string[];
  /**
   * Chain ids of the layers, lowest first: what containerd names the committed snapshot of each
   * layer (`chain[0] = diffIds[0]`, `chain[i] = sha256(chain[i-1] + " " + diffIds[i])`).
   */
  chainIds: string[];
}

/** Why images cannot be built here, or null when they can (root, umoci, busybox-static, setfattr). */
export function ociImageUnavailable(): string | null {
  if (!isRoot) return 'not root (umoci unpack needs root to set owners)';
  if (!which('umoci')) return 'umoci missing';
  if (!which('tar')) return 'tar missing';
  return null;
}

async function must(cmd: string, args: string[], timeoutMs = 300_000): Promise<string> {
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** `path` inside `rootfs`, refusing paths that are not absolute or climb out with `..`. */
function inRoot(rootfs: string, path: string): string {
  const norm = posix.normalize(path);
  if (!path.startsWith('/') || norm === '/' || path.split('/').includes('..')) throw new Error(`bad image path ${JSON.stringify(path)}: must be absolute, not / itself`);
  return join(rootfs, norm);
}

async function writeSized(file: string, content: Uint8Array | undefined, size: number): Promise<void> {
  const fh = await open(file, 'w');
  try {
    if (content && content.length > 0) {
      // A chunk holds whole repetitions of the pattern, so the pattern runs on across chunks.
      const reps = Math.max(1, Math.floor((1 << 20) / content.length));
      const chunk = Buffer.alloc(reps * content.length).fill(content);
      for (let off = 0; off < size; off += chunk.length) await fh.write(chunk, 0, Math.min(chunk.length, size - off), off);
    }
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

async function addFile(rootfs: string, f: FileSpec): Promise<void> {
  const p = inRoot(rootfs, f.path);
  const type = f.type ?? 'file';
  await mkdir(dirname(p), { recursive: true, mode: 0o755 });
  const existing = await lstat(p).catch(() => null);
  if (existing && !(type === 'dir' && existing.isDirectory())) await rm(p, { recursive: true, force: true });
  const content = typeof f.content === 'string' ? Buffer.from(f.content) : f.content;
  switch (type) {
    case 'file':
      if (f.size !== undefined) await writeSized(p, content, f.size);
      else await writeFile(p, content ?? new Uint8Array());
      break;
    case 'dir':
      await mkdir(p, { recursive: true });
      break;
    case 'symlink':
      if (f.target === undefined) throw new Error(`symlink ${f.path} needs a target`);
      await symlink(f.target, p);
      break;
    case 'hardlink':
      if (f.target === undefined) throw new Error(`hardlink ${f.path} needs a target`);
      await link(inRoot(rootfs, f.target), p);
      break;
  }
  // A hardlink shares its target's inode (mode, owner, xattrs); lchown sets a symlink's own owner.
  if (type !== 'hardlink') await lchown(p, f.uid ?? 0, f.gid ?? 0);
  // After the owner: chown clears setuid/setgid bits, even for root.
  if (type === 'file' || type === 'dir') await chmod(p, f.mode ?? (type === 'dir' ? 0o755 : 0o644));
  for (const [name, value] of Object.entries(f.xattrs ?? {})) {
    if (!which('setfattr')) throw new Error('setfattr missing (Debian package attr): cannot set xattrs');
    const hex = '0x' + Buffer.from(typeof value === 'string' ? Buffer.from(value) : value).toString('hex');
    await must('setfattr', [...(type === 'symlink' ? ['-h'] : []), '-n', name, '-v', hex, p]);
  }
}

async function addBusybox(rootfs: string): Promise<void> {
  if (!existsSync(BUSYBOX_STATIC)) throw new Error(`${BUSYBOX_STATIC} missing (Debian package busybox-static)`);
  const bin = join(rootfs, 'bin');
  await mkdir(bin, { recursive: true, mode: 0o755 });
  const dest = join(bin, 'busybox');
  await rm(dest, { force: true });
  await writeFile(dest, await readFile(BUSYBOX_STATIC));
  await chmod(dest, 0o755);
  const list = spawnSync(BUSYBOX_STATIC, ['--list-full'], { encoding: 'utf8' });
  if (list.status !== 0) throw new Error(`busybox --list-full failed: ${list.stderr}`);
  for (const rel of list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (rel === 'bin/busybox') continue;
    const p = inRoot(rootfs, '/' + rel);
    await mkdir(dirname(p), { recursive: true, mode: 0o755 });
    if (await lstat(p).then(() => true, () => false)) continue; // an earlier layer's or an applet listed twice
    await symlink('/bin/busybox', p);
  }
}

async function removePath(rootfs: string, path: string): Promise<void> {
  const p = inRoot(rootfs, path);
  if (!(await lstat(p).then(() => true, () => false))) throw new Error(`cannot remove ${path}: not in the image`);
  await rm(p, { recursive: true, force: true });
}

/**
 * Builds the image in `workDir` (created if missing): `workDir/layout` and `workDir/image.tar`.
 * Needs root and umoci (see {@link ociImageUnavailable}); throws with the tool's message when a
 * step fails.
 */
export async function buildOciImage(workDir: string, spec: OciImageSpec): Promise<OciImage> {
  const why = ociImageUnavailable();
  if (why) throw new Error(`cannot build an OCI image: ${why}`);
  if (spec.layers.length === 0) throw new Error('an image needs at least one layer');
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(spec.tag)) throw new Error(`bad OCI tag ${JSON.stringify(spec.tag)}`);
  const name = spec.name ?? `localhost/thinpool-test:${spec.tag}`;
  const layout = join(workDir, 'layout');
  const bundle = join(workDir, 'bundle');
  const archive = join(workDir, 'image.tar');
  const image = `${layout}:${spec.tag}`;
  await mkdir(workDir, { recursive: true });
  await rm(layout, { recursive: true, force: true });
  await rm(bundle, { recursive: true, force: true });
  await must('umoci', ['init', '--layout', layout]);
  await must('umoci', ['new', '--image', image]);
  await must('umoci', ['unpack', '--image', image, bundle]);
  const rootfs = join(bundle, 'rootfs');
  try {
    for (const [i, layer] of spec.layers.entries()) {
      for (const p of layer.remove ?? []) await removePath(rootfs, p);
      if (layer.busybox) await addBusybox(rootfs);
      for (const f of layer.files ?? []) await addFile(rootfs, f);
      await must('umoci', ['repack', '--refresh-bundle', '--history.created_by', `thinpool test layer ${i}`, '--image', image, bundle]);
    }
  } finally {
    await rm(bundle, { recursive: true, force: true });
  }
  const c = spec.config ?? {};
  const args = ['config', '--image', image, '--no-history'];
  for (const v of c.cmd ?? []) args.push('--config.cmd', v);
  for (const v of c.entrypoint ?? []) args.push('--config.entrypoint', v);
  for (const v of c.env ?? []) args.push('--config.env', v);
  if (c.workdir !== undefined) args.push('--config.workingdir', c.workdir);
  if (c.user !== undefined) args.push('--config.user', c.user);
  for (const [k, v] of Object.entries(c.labels ?? {})) args.push('--config.label', `${k}=${v}`);
  if (args.length > 4) await must('umoci', args);
  await must('umoci', ['gc', '--layout', layout]);

  // containerd names an imported image after `io.containerd.image.name`; without it a tag-only
  // `org.opencontainers.image.ref.name` becomes `import-YYYY-MM-DD:TAG` (ctr's --base-name default).
  const indexPath = join(layout, 'index.json');
  const index = JSON.parse(await readFile(indexPath, 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === spec.tag);
  if (!entry) throw new Error(`umoci left no manifest tagged ${spec.tag} in ${indexPath}`);
  entry.annotations = { ...entry.annotations, 'io.containerd.image.name': name };
  await writeFile(indexPath, JSON.stringify(index));
  const blob = async (digest: string) => JSON.parse(await readFile(join(layout, 'blobs', ...digest.split(':')), 'utf8')) as unknown;
  const manifestJson = (await blob(entry.digest)) as { config: { digest: string }; layers: { digest: string }[] };
  const configJson = (await blob(manifestJson.config.digest)) as { rootfs: { diff_ids: string[] } };
  const diffIds = configJson.rootfs.diff_ids;
  const chainIds: string[] = [];
  for (const d of diffIds) chainIds.push(chainIds.length === 0 ? d : 'sha256:' + createHash('sha256').update(`${chainIds[chainIds.length - 1]} ${d}`).digest('hex'));

  await rm(archive, { force: true });
  await must('tar', ['-C', layout, '-cf', archive, 'oci-layout', 'index.json', 'blobs']);
  return { layout, archive, tag: spec.tag, name, manifest: entry.digest, config: manifestJson.config.digest, layers: manifestJson.layers.map((l) => l.digest), diffIds, chainIds };
}
