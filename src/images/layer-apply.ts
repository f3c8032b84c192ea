/**
 * Applies an OCI/Docker layer tar to a directory, as containerd's unpacker (archive.Apply) and
 * umoci do: regular files, directories, symlinks, hard links, device nodes and fifos with their
 * modes (setuid, setgid, sticky), owners, nanosecond times and extended attributes; whiteouts
 * `.wh.NAME` delete NAME from the lower layers and `.wh..wh..opq` empties a directory of its
 * lower content, both sparing what this layer itself adds whatever the entry order (OCI image
 * spec, "Whiteouts"); an entry replaces an existing one of another type, and merges with an
 * existing directory. Directory modes and times are set after their contents; directories the
 * layer changes without listing keep their times.
 *
 * Safety: every entry is resolved inside the root by {@link ScopedRoot} (no absolute names, no
 * `..` above the root, no symlink followed out of it, no absolute symlink followed at all), and
 * hard link targets likewise. A refused entry rejects with an {@link UnsafeLayerError} naming it;
 * nothing outside the root has been written, but entries before it have been applied: the
 * caller discards the directory (the active snapshot) rather than this function undoing them.
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, link, lstat, mkdir, open, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { BadImageError, IoError, NoSpaceError, ThinpoolError, UnsafeLayerError } from '../errors.js';
import { type FileMeta, createFile, lsetxattr, lutimens, mknod, setMeta } from '../io/native.js';
import { type ApplySummary, emptySummary, noteSkipped } from './apply-summary.js';
import { type ResolvedDir, ScopedRoot, entryComponents } from './scoped-root.js';
import { writeSparse } from './sparse-writer.js';
import { WHITEOUT_PREFIX, type WhiteoutContext, applyWhiteout } from './whiteouts.js';
import { type TarEntry, decodeEntry, feedTar, tarStream } from './tar-format.js';

export type { ApplySummary, SkippedItem } from './apply-summary.js';
export { OPAQUE_MARKER, WHITEOUT_PREFIX } from './whiteouts.js';

/** Options of {@link applyLayer}. */
export interface ApplyOptions {
  /** Apply owners (lchown). Default: true when running as root; otherwise owners are counted in `ownersSkipped`. */
  owners?: boolean;
  /** Device nodes: `create` (mknod, needs root; the default) or `skip` (listed in the summary). Fifos are always made. */
  devices?: 'create' | 'skip';
  /** What the layer is, for messages (e.g. its digest). */
  layer?: string;
  /** Stops between entries. */
  signal?: AbortSignal;
}

/** Files up to this size are read whole and created in one native call; larger ones are streamed. */
const SMALL_FILE = 256 * 1024;
/** Small files created at once (the thread pool runs 4 at a time; the rest wait queued). */
const MAX_INFLIGHT = 16;
/** Extended attributes never copied from a layer (host security labels). */
const IGNORED_XATTRS = new Set(['security.selinux']);

interface DeferredDir {
  real: string;
  entry: TarEntry;
}

interface TouchedDir {
  real: string;
  ino: bigint;
  atimeNs: bigint;
  mtimeNs: bigint;
}

const isRoot = typeof process.geteuid === 'function' && process.geteuid() === 0;

/**
 * Applies the layer tar read from `tar` (uncompressed) to the directory `root`, and resolves to
 * what was done. Rejects with an UnsafeLayerError (an entry that would leave the root), a
 * BadImageError (an entry that cannot be applied, a truncated or corrupt tar, or whatever error
 * the `tar` stream fails with, e.g. a digest mismatch), a NoSpaceError or an IoError naming the
 * entry. After a rejection the directory holds part of the layer: discard it.
 */
export async function applyLayer(root: string, tar: Readable | AsyncIterable<Uint8Array>, opts: ApplyOptions = {}): Promise<ApplySummary> {
  return new LayerApplier(root, opts).run(tar);
}

class LayerApplier {
  readonly summary = emptySummary();
  private readonly scoped: ScopedRoot;
  /** Components (joined) of every path this layer made or changed, and their ancestors. */
  private readonly upper = new Set<string>(['']);
  /** Directories this layer created (implicitly or as entries): their times are not restored. */
  private readonly created = new Set<string>();
  private readonly deferred = new Map<string, DeferredDir>();
  private readonly touched = new Map<string, TouchedDir>();
  /** Small files being created in the background, by path relative to the root. */
  private readonly inflight = new Map<string, Promise<void>>();
  /** The first error of a background creation, thrown by the next {@link settle}. */
  private failure: unknown;
  private readonly owners: boolean;
  private readonly whiteoutContext: WhiteoutContext;
  /** ` of layer X` for entry messages. */
  private readonly layer: string;
  /** `layer X` for layer messages. */
  private readonly label: string;

  constructor(readonly root: string, private readonly opts: ApplyOptions) {
    this.scoped = new ScopedRoot(root, async (dir) => {
      await this.touch(dir);
    });
    this.whiteoutContext = {
      scoped: this.scoped,
      upper: this.upper,
      touch: (dir) => this.touch(dir),
      summary: this.summary,
      layer: opts.layer ? ` of layer ${opts.layer}` : '',
    };
    this.owners = opts.owners ?? isRoot;
    this.layer = opts.layer ? ` of layer ${opts.layer}` : '';
    this.label = opts.layer ? `layer ${opts.layer}` : 'layer';
  }

  async run(source: Readable | AsyncIterable<Uint8Array>): Promise<ApplySummary> {
    const st = await lstat(this.root).catch(() => undefined);
    if (!st?.isDirectory()) throw new BadImageError(`Cannot apply ${this.label}: ${this.root} is not a directory`, { root: this.root });
    const extract = tarStream().extract();
    // The parser's own error (a truncated tar, or the source's error it was destroyed with) is the
    // cause of whatever an entry's read fails with afterwards.
    let parseError: unknown;
    extract.on('error', (err: unknown) => {
      parseError ??= err;
    });
    const feeding = feedTar(source, extract);
    try {
      for await (const stream of extract as AsyncIterable<Readable & { header: import('tar-stream').Header }>) {
        this.opts.signal?.throwIfAborted();
        const entry = decodeEntry(stream.header);
        try {
          await this.apply(entry, stream);
        } catch (err) {
          throw parseError ?? this.wrap(err, entry.name);
        }
        for await (const _ of stream); // what the entry did not read
      }
      await this.settle();
    } catch (caught) {
      await this.settle().catch(() => undefined);
      const err = parseError ?? caught;
      extract.destroy(null);
      (source as Partial<Readable>).destroy?.();
      await feeding;
      if (err instanceof ThinpoolError || (err as Error)?.name === 'AbortError') throw err;
      throw new BadImageError(`Cannot apply ${this.label}: the tar is damaged or truncated (${(err as Error).message})`, {}, { cause: err });
    }
    await feeding;
    await this.finish();
    return this.summary;
  }

  private wrap(err: unknown, name: string): unknown {
    if (err instanceof ThinpoolError || (err as Error)?.name === 'AbortError') return err;
    const e = err as NodeJS.ErrnoException;
    const msg = `Cannot apply entry ${JSON.stringify(name)}${this.layer}: ${e.message}`;
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return new NoSpaceError(msg, { entry: name });
    if (typeof e.code === 'string') return new IoError(msg, { entry: name, errno: e.code }, { cause: err });
    return err;
  }

  private async apply(e: TarEntry, stream: Readable): Promise<void> {
    this.summary.entries++;
    // Small regular files are created in the background, several at a time; anything else
    // (which could depend on one of them) waits for them first.
    if (!(e.type === 'file' && e.size <= SMALL_FILE)) await this.settle();
    if (e.type === null) {
      throw new BadImageError(`Cannot apply entry ${JSON.stringify(e.name)}${this.layer}: tar entries of type ${JSON.stringify(e.typeflag)} are not supported`, { entry: e.name });
    }
    if (e.sparse) {
      throw new BadImageError(`Cannot apply entry ${JSON.stringify(e.name)}${this.layer}: GNU sparse files are not supported in layers`, { entry: e.name });
    }
    const comps = entryComponents(e.name, e.name);
    const base = comps.length > 0 ? comps[comps.length - 1]! : '';
    if (base.startsWith(WHITEOUT_PREFIX)) return applyWhiteout(this.whiteoutContext, e, comps);
    if (comps.length === 0) return this.rootEntry(e);

    // A small file still being created in the background on this entry's path must exist before
    // the path is resolved (else resolving would make a directory in its place).
    if (this.dependsOnInflight(comps.join('/'))) await this.settle();
    const dir = (await this.scoped.resolveDir(comps.slice(0, -1), e.name, true))!;
    const path = join(dir.real, base);
    const rel = [...dir.comps, base].join('/');
    await this.touch(dir);
    // Create first; only when something is in the way (EEXIST) look at it and replace it.
    const create = async (make: () => Promise<void>): Promise<void> => {
      try {
        await make();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        await this.remove(path, rel);
        await make();
      }
    };

    switch (e.type) {
      case 'directory': {
        try {
          await mkdir(path, 0o700);
          this.created.add(rel);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          if (!(await lstat(path)).isDirectory()) {
            await this.remove(path, rel);
            await mkdir(path, 0o700);
            this.created.add(rel);
          } // else: merge with the existing directory
        }
        await this.xattrs(path, e);
        this.deferred.set(rel, { real: path, entry: e });
        this.summary.dirs++;
        break;
      }
      case 'file': {
        if (e.size <= SMALL_FILE) {
          const chunks: Buffer[] = [];
          for await (const c of stream) chunks.push(c as Buffer);
          const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
          if (this.dependsOnInflight(rel)) await this.settle();
          else if (this.inflight.size >= MAX_INFLIGHT) await this.settle(MAX_INFLIGHT - 1);
          const meta = this.meta(e);
          const op = (async () => {
            await create(() => createFile(path, data, meta));
            await this.xattrs(path, e);
            this.summary.bytes += data.length;
            this.summary.bytesWritten += data.length;
            this.summary.files++;
          })().then(
            () => void this.inflight.delete(rel),
            (err: unknown) => {
              this.inflight.delete(rel);
              this.failure ??= this.wrap(err, e.name);
            },
          );
          this.inflight.set(rel, op);
          this.markUpper(rel);
          return;
        } else {
          let fh: FileHandle | undefined;
          await create(async () => {
            fh = await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
          });
          try {
            const { size, written } = await writeSparse(fh!, stream);
            this.summary.bytes += size;
            this.summary.bytesWritten += written;
            await setMeta(fh!.fd, this.meta(e));
          } finally {
            await fh!.close();
          }
        }
        await this.xattrs(path, e);
        this.summary.files++;
        break;
      }
      case 'symlink':
        if (e.linkname === '') throw new BadImageError(`Cannot apply entry ${JSON.stringify(e.name)}${this.layer}: a symlink with an empty target`, { entry: e.name });
        await create(() => symlink(e.linkname, path));
        await setMeta(path, { ...this.meta(e), mode: undefined });
        await this.xattrs(path, e);
        this.summary.symlinks++;
        break;
      case 'link': {
        const target = await this.linkTarget(e);
        // link(2) does not follow a symlink target: the new name is a link to the symlink itself.
        await create(() => link(target, path));
        this.summary.hardlinks++;
        break;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        if (e.type !== 'fifo' && this.opts.devices === 'skip') {
          noteSkipped(this.summary, { entry: e.name, what: 'device', reason: `${e.type} ${e.devmajor}:${e.devminor} not created (devices: skip)` });
          return;
        }
        const kind = e.type === 'fifo' ? fsc.S_IFIFO : e.type === 'block-device' ? fsc.S_IFBLK : fsc.S_IFCHR;
        try {
          await create(() => mknod(path, kind | 0o600, e.devmajor, e.devminor));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EPERM' && e.type !== 'fifo') {
            throw new IoError(`Cannot apply entry ${JSON.stringify(e.name)}${this.layer}: creating a ${e.type} (${e.devmajor}:${e.devminor}) needs root (CAP_MKNOD); apply with devices: 'skip' to leave device nodes out`, { entry: e.name, errno: 'EPERM' });
          }
          throw err;
        }
        await setMeta(path, this.meta(e));
        await this.xattrs(path, e);
        if (e.type === 'fifo') this.summary.fifos++;
        else this.summary.devices++;
        break;
      }
    }
    this.markUpper(rel);
  }

  /** True when a background creation is at `rel`, at one of its ancestors or under it. */
  private dependsOnInflight(rel: string): boolean {
    if (this.inflight.size === 0) return false;
    for (const p of this.inflight.keys()) {
      if (p === rel || p.startsWith(rel + '/') || rel.startsWith(p + '/')) return true;
    }
    return false;
  }

  /**
   * Waits until at most `atMost` background file creations are in flight (all, by default), then
   * throws the first error any of them had.
   */
  private async settle(atMost = 0): Promise<void> {
    while (this.inflight.size > atMost) await Promise.race(this.inflight.values());
    if (this.failure !== undefined) {
      const err = this.failure;
      this.failure = undefined;
      throw err;
    }
  }

  /** Owner (when applied), mode and times of an entry, for createFile/setMeta. */
  private meta(e: TarEntry): FileMeta {
    const m: FileMeta = { mode: e.mode, atimeNs: e.atimeNs ?? e.mtimeNs, mtimeNs: e.mtimeNs };
    if (this.owners) {
      m.uid = e.uid;
      m.gid = e.gid;
    } else this.summary.ownersSkipped++;
    return m;
  }

  /** Removes what is at `path` (an entry replaces it, or a whiteout deletes it). */
  private async remove(path: string, rel: string): Promise<void> {
    const st = await lstat(path).catch(() => undefined);
    if (!st) return;
    await rm(path, { recursive: true, force: true });
    if (st.isDirectory() || st.isSymbolicLink()) this.scoped.invalidate();
    if (st.isDirectory()) {
      for (const key of this.deferred.keys()) if (key === rel || key.startsWith(rel + '/')) this.deferred.delete(key);
      for (const key of this.created) if (key === rel || key.startsWith(rel + '/')) this.created.delete(key);
    }
  }

  /** The root directory's own entry (`./`): metadata only; it cannot change type. */
  private async rootEntry(e: TarEntry): Promise<void> {
    if (e.type !== 'directory') {
      throw new UnsafeLayerError(`Cannot apply entry ${JSON.stringify(e.name)}${this.layer}: it would replace the layer's root directory with a ${e.type}`, { entry: e.name });
    }
    await this.xattrs(this.root, e);
    this.deferred.set('', { real: this.root, entry: e });
    this.summary.dirs++;
  }

  /** The real path of a hard link's target, resolved inside the root; it must exist and not be a directory. */
  private async linkTarget(e: TarEntry): Promise<string> {
    const comps = entryComponents(e.linkname, e.name, 'hard link');
    if (comps.length === 0) {
      throw new UnsafeLayerError(`Cannot apply hard link ${JSON.stringify(e.name)}${this.layer}: its target is the layer's root`, { entry: e.name, target: e.linkname });
    }
    const dir = await this.scoped.resolveDir(comps.slice(0, -1), e.name, false);
    const target = dir ? join(dir.real, comps[comps.length - 1]!) : undefined;
    const st = target ? await lstat(target).catch(() => undefined) : undefined;
    if (!target || !st) {
      throw new BadImageError(`Cannot apply hard link ${JSON.stringify(e.name)}${this.layer}: its target ${JSON.stringify(e.linkname)} does not exist`, { entry: e.name, target: e.linkname });
    }
    if (st.isDirectory()) {
      throw new BadImageError(`Cannot apply hard link ${JSON.stringify(e.name)}${this.layer}: its target ${JSON.stringify(e.linkname)} is a directory`, { entry: e.name, target: e.linkname });
    }
    return target;
  }

  private async xattrs(path: string, e: TarEntry): Promise<void> {
    for (const [name, value] of e.xattrs) {
      if (IGNORED_XATTRS.has(name)) {
        noteSkipped(this.summary, { entry: e.name, what: `xattr ${name}`, reason: 'host security label, never copied from a layer' });
        continue;
      }
      try {
        await lsetxattr(path, name, value);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
          noteSkipped(this.summary, { entry: e.name, what: `xattr ${name}`, reason: 'the file system does not support it' });
        } else if (code === 'EPERM' && (!isRoot || e.type === 'symlink' || name.startsWith('user.'))) {
          noteSkipped(this.summary, { entry: e.name, what: `xattr ${name}`, reason: isRoot ? `not allowed on a ${e.type}` : 'needs root' });
        } else throw err;
      }
    }
  }

  /** Notes `rel` and its ancestors as this layer's. */
  private markUpper(rel: string): void {
    for (let p = rel; p !== '' && !this.upper.has(p); p = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '') this.upper.add(p);
  }

  /** Records a pre-existing directory's times before this layer changes its content. */
  private async touch(dir: ResolvedDir): Promise<void> {
    const key = dir.comps.join('/');
    if (this.touched.has(key) || this.created.has(key)) return;
    const st = await lstat(dir.real, { bigint: true });
    this.touched.set(key, { real: dir.real, ino: st.ino, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
  }

  /** Directory modes and times after their contents; restores the times of directories changed but not listed. */
  private async finish(): Promise<void> {
    for (const d of this.deferred.values()) await setMeta(d.real, this.meta(d.entry));
    for (const [key, t] of this.touched) {
      if (this.deferred.has(key)) continue;
      const st = await lstat(t.real, { bigint: true }).catch(() => undefined);
      if (!st?.isDirectory() || st.ino !== t.ino) continue;
      await lutimens(t.real, t.atimeNs, t.mtimeNs);
    }
  }
}
