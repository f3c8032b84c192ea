/**
 * Builds layer tars in memory for tests, through tar-stream and the images layer's header
 * encoder (so xattrs go in as byte-exact `SCHILY.xattr.*` PAX records). Names are written as
 * given, `..` and absolute paths included, for the hostile-input tests.
 */
import { encodeHeader, type EntryType, tarStream } from '../../src/images/tar-format.js';

/** One entry of a test tar. */
export interface TarSpec {
  name: string;
  type?: EntryType;
  content?: string | Uint8Array;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  /** mtime in nanoseconds (default 2023-11-14T22:13:20Z). */
  mtimeNs?: bigint;
  xattrs?: Record<string, string | Uint8Array>;
  devmajor?: number;
  devminor?: number;
}

export const DEFAULT_MTIME = 1_700_000_000_000_000_000n;

/** A tar of `entries`, in order. */
export async function buildTar(entries: TarSpec[]): Promise<Buffer> {
  const pack = tarStream().pack();
  const chunks: Buffer[] = [];
  const collecting = (async () => {
    for await (const c of pack as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const content = e.content === undefined ? Buffer.alloc(0) : Buffer.from(e.content);
    const header = encodeHeader({
      name: e.name,
      type,
      size: type === 'file' ? content.length : 0,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtimeNs: e.mtimeNs ?? DEFAULT_MTIME,
      linkname: e.linkname ?? '',
      devmajor: e.devmajor ?? 0,
      devminor: e.devminor ?? 0,
      xattrs: new Map(Object.entries(e.xattrs ?? {}).map(([k, v]) => [k, Buffer.from(v)])),
    });
    await new Promise<void>((resolve, reject) => {
      if (type === 'file') pack.entry(header, content, (err) => (err ? reject(err) : resolve()));
      else pack.entry(header, (err) => (err ? reject(err) : resolve())).end(undefined);
    });
  }
  pack.finalize();
  await collecting;
  return Buffer.concat(chunks);
}
