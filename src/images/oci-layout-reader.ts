/**
 * Reads one image from an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`), in
 * a directory or a tar. The image is chosen from `index.json` by ref name when one is asked
 * for, else the only entry; an entry that is an index (multi-platform, or nested indexes) is
 * followed to the manifest of the wanted platform (the host's, linux/amd64 here). When no
 * single image fits, the error lists the choices.
 */
import { BadImageError, NotFoundError } from '../errors.js';
import { type ArchiveFiles, readArchiveFile } from './archive-files.js';
import { digestHex } from './digest.js';
import { type ImageSource, MAX_DOCUMENT, makeImageSource, readVerified } from './image-source.js';
import { isConfigType, isIndexType, isManifestType } from './media-types.js';
import { type Descriptor, IMAGE_NAME, type Platform, REF_NAME, parseConfig, parseIndex, parseJson, parseManifest } from './oci-types.js';

/** Which image of an archive to read. */
export interface ImageSelection {
  /** A tag or name (`latest`, `alpine:3`, `docker.io/library/alpine:3`). */
  ref?: string | undefined;
  /** The platform wanted from a multi-platform index (default: the host's). */
  platform?: Platform | undefined;
}

/** The host's platform in OCI terms. */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch };
}

/** Path of a blob in an OCI layout. */
export function blobPath(d: Descriptor): string {
  return `blobs/sha256/${digestHex(d.digest)}`;
}

function platformText(p: Platform | undefined): string {
  return p ? `${p.os}/${p.architecture}${p.variant ? '/' + p.variant : ''}` : 'no platform';
}

/** Names an index entry in messages: its ref names, else its platform, and its digest. */
function describe(d: Descriptor): string {
  const names = [d.annotations?.[REF_NAME], d.annotations?.[IMAGE_NAME]].filter((x): x is string => !!x);
  return `${names.length ? names.join(' / ') : platformText(d.platform)} (${d.digest})`;
}

/** True when an index entry carries the name `ref`. */
export function matchesRef(d: Descriptor, ref: string): boolean {
  const names = [d.annotations?.[REF_NAME], d.annotations?.[IMAGE_NAME]].filter((x): x is string => !!x);
  return names.some((n) => n === ref || n.endsWith('/' + ref) || (!ref.includes(':') && (n === `${ref}:latest` || n.endsWith(`/${ref}:latest`))));
}

function choosePlatform(entries: Descriptor[], want: Platform, where: string): Descriptor {
  if (entries.length === 1) return entries[0]!;
  const fits = entries.filter((d) => d.platform && d.platform.os === want.os && d.platform.architecture === want.architecture && (!want.variant || d.platform.variant === want.variant));
  if (fits.length > 0) return fits[0]!;
  const choices = entries.map(describe).join(', ');
  throw new NotFoundError(`Cannot choose an image in ${where}: no manifest for ${platformText(want)}; it holds ${choices || 'nothing'}`, { choices: entries.map((d) => d.digest) });
}

/** Reads the image `sel` names from the OCI layout in `files`. */
export async function readOciLayout(files: ArchiveFiles, sel: ImageSelection = {}): Promise<ImageSource> {
  const where = files.location;
  const layout = parseJson(await readArchiveFile(files, 'oci-layout', 4096), `oci-layout of ${where}`);
  if (typeof layout.imageLayoutVersion !== 'string') throw new BadImageError(`Cannot read ${where}: oci-layout has no imageLayoutVersion`, { path: where });
  const index = parseIndex(await readArchiveFile(files, 'index.json', MAX_DOCUMENT), `index.json of ${where}`);
  const want = sel.platform ?? hostPlatform();

  let candidates = index.manifests;
  if (sel.ref !== undefined) {
    candidates = candidates.filter((d) => matchesRef(d, sel.ref!));
    if (candidates.length === 0) {
      const names = index.manifests.map(describe).join(', ');
      throw new NotFoundError(`Cannot find image ${JSON.stringify(sel.ref)} in ${where}: it holds ${names || 'nothing'}`, { ref: sel.ref });
    }
  }
  if (candidates.length === 0) throw new BadImageError(`Cannot read ${where}: index.json lists no images`, { path: where });
  const distinct = new Set(candidates.map((d) => d.digest));
  let top: Descriptor;
  if (distinct.size === 1) top = candidates[0]!;
  else if (candidates.every((d) => d.platform)) top = choosePlatform(candidates, want, where);
  else {
    throw new NotFoundError(`Cannot choose an image in ${where}: it holds ${candidates.length} images, ${candidates.map(describe).join(', ')}; name one`, { choices: candidates.map(describe) });
  }

  let d = top;
  for (let depth = 0; ; depth++) {
    if (isManifestType(d.mediaType)) break;
    if (!isIndexType(d.mediaType)) throw new BadImageError(`Cannot read ${where}: ${describe(d)} has media type ${JSON.stringify(d.mediaType)}, expected an image manifest or index`, { blob: d.digest });
    if (depth >= 4) throw new BadImageError(`Cannot read ${where}: indexes nested more than 4 deep`, { blob: d.digest });
    const nested = parseIndex(await readVerified(() => files.open(blobPath(d)), d, 'image index'), `image index ${d.digest} in ${where}`);
    if (nested.manifests.length === 0) throw new BadImageError(`Cannot read ${where}: image index ${d.digest} lists no manifests`, { blob: d.digest });
    d = choosePlatform(nested.manifests, want, `image index ${d.digest} in ${where}`);
  }

  const manifestBytes = await readVerified(() => files.open(blobPath(d)), d, 'image manifest');
  const manifest = parseManifest(manifestBytes, `image manifest ${d.digest} in ${where}`);
  if (!isConfigType(manifest.config.mediaType)) {
    throw new BadImageError(`Cannot read image manifest ${d.digest} in ${where}: config media type ${JSON.stringify(manifest.config.mediaType)} is not an image config`, { blob: d.digest });
  }
  const configBytes = await readVerified(() => files.open(blobPath(manifest.config)), manifest.config, 'image config');
  const config = parseConfig(configBytes, `image config ${manifest.config.digest} in ${where}`);
  const tags = [...new Set(index.manifests.filter((x) => x.digest === top.digest).flatMap((x) => [x.annotations?.[REF_NAME]].filter((n): n is string => !!n)))];
  return makeImageSource({ format: 'oci-layout', location: where, tags, manifestDescriptor: d, manifest, manifestBytes, config, configBytes }, files, blobPath);
}
