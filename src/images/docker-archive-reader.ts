/**
 * Reads one image from a `docker save` archive: `manifest.json` (a list of `{Config, RepoTags,
 * Layers, LayerSources?}`), the config named by its digest (`<hex>.json` or
 * `blobs/sha256/<hex>`), and one tar per layer (`<id>/layer.tar` before docker 25,
 * `blobs/sha256/<hex>` since). A layer's descriptor comes from `LayerSources` when present,
 * else from its `blobs/sha256/<hex>` path, else (old archives, uncompressed layers) its digest
 * is the layer's diff id. The image gets a Docker v2 schema 2 manifest built from these
 * descriptors, which is what `image save` writes back.
 */
import { BadImageError, NotFoundError } from '../errors.js';
import { type ArchiveFiles, readArchiveFile } from './archive-files.js';
import { type Digest, digestFromHex, isDigest, sha256Digest } from './digest.js';
import { type ImageSource, MAX_DOCUMENT, makeImageSource, readVerified } from './image-source.js';
import { MEDIA_TYPES } from './media-types.js';
import { type Descriptor, type ImageManifest, parseConfig, parseDescriptor } from './oci-types.js';
import type { ImageSelection } from './oci-layout-reader.js';

interface ArchiveEntry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
  LayerSources?: Record<string, unknown>;
}

const HEX_PATH = /(?:^|\/)([0-9a-f]{64})(?:\.json)?$/;

function parseEntries(bytes: Buffer, where: string): ArchiveEntry[] {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new BadImageError(`Cannot read manifest.json of ${where}: not JSON (${(err as Error).message})`, { path: where });
  }
  if (!Array.isArray(v) || v.length === 0) throw new BadImageError(`Cannot read manifest.json of ${where}: expected a non-empty list of images`, { path: where });
  return v.map((e, i) => {
    const o = e as Partial<ArchiveEntry>;
    if (typeof o !== 'object' || o === null || typeof o.Config !== 'string' || !Array.isArray(o.Layers) || !o.Layers.every((l) => typeof l === 'string')) {
      throw new BadImageError(`Cannot read manifest.json of ${where}: entry ${i} needs Config and Layers`, { path: where });
    }
    return { Config: o.Config, RepoTags: Array.isArray(o.RepoTags) ? o.RepoTags.filter((t) => typeof t === 'string') : [], Layers: o.Layers, LayerSources: o.LayerSources } as ArchiveEntry;
  });
}

function matches(tag: string, ref: string): boolean {
  const withTag = ref.includes(':') ? ref : `${ref}:latest`;
  return tag === ref || tag === withTag || tag.endsWith('/' + withTag) || withTag.endsWith('/' + tag);
}

/** Reads the image `sel` names from the `docker save` archive in `files`. */
export async function readDockerArchive(files: ArchiveFiles, sel: ImageSelection = {}): Promise<ImageSource> {
  const where = files.location;
  const entries = parseEntries(await readArchiveFile(files, 'manifest.json', MAX_DOCUMENT), where);
  let chosen: ArchiveEntry;
  const names = () => entries.map((e) => (e.RepoTags.length ? e.RepoTags.join(' / ') : e.Config)).join(', ');
  if (sel.ref !== undefined) {
    const found = entries.filter((e) => e.RepoTags.some((t) => matches(t, sel.ref!)));
    if (found.length === 0) throw new NotFoundError(`Cannot find image ${JSON.stringify(sel.ref)} in ${where}: it holds ${names()}`, { ref: sel.ref });
    chosen = found[0]!;
  } else if (entries.length === 1) chosen = entries[0]!;
  else throw new NotFoundError(`Cannot choose an image in ${where}: it holds ${entries.length} images, ${names()}; name one`, { choices: entries.map((e) => e.RepoTags) });

  const m = HEX_PATH.exec(chosen.Config);
  if (!m) throw new BadImageError(`Cannot read ${where}: the config path ${JSON.stringify(chosen.Config)} does not name its digest`, { path: chosen.Config });
  const configSize = await files.size(chosen.Config);
  if (configSize === undefined) throw new BadImageError(`Cannot read ${where}: the config ${chosen.Config} is missing`, { path: chosen.Config });
  const configDesc: Descriptor = { mediaType: MEDIA_TYPES.dockerConfig, digest: digestFromHex(m[1]!), size: configSize };
  const configBytes = await readVerified(() => files.open(chosen.Config), configDesc, 'image config');
  const config = parseConfig(configBytes, `image config ${configDesc.digest} in ${where}`);
  const diffIds = config.rootfs.diff_ids;
  if (diffIds.length !== chosen.Layers.length) {
    throw new BadImageError(`Cannot read ${where}: manifest.json lists ${chosen.Layers.length} layers, the config ${diffIds.length} diff ids`, { path: where });
  }

  const paths = new Map<Digest, string>();
  const layers: Descriptor[] = [];
  for (let i = 0; i < chosen.Layers.length; i++) {
    const path = chosen.Layers[i]!;
    const diffId = diffIds[i]!;
    const size = await files.size(path);
    if (size === undefined) throw new BadImageError(`Cannot read layer ${i + 1} of ${where}: ${path} is missing from the archive`, { path });
    let d: Descriptor;
    const source = chosen.LayerSources?.[diffId];
    const hm = HEX_PATH.exec(path);
    if (source !== undefined) d = parseDescriptor(source, `manifest.json of ${where}`, `LayerSources[${diffId}]`);
    else if (hm && path.startsWith('blobs/')) d = { mediaType: MEDIA_TYPES.dockerLayer, digest: digestFromHex(hm[1]!), size };
    else d = { mediaType: MEDIA_TYPES.dockerLayer, digest: diffId, size };
    if (!isDigest(d.digest)) throw new BadImageError(`Cannot read layer ${i + 1} of ${where}: no digest`, { path });
    paths.set(d.digest, path);
    layers.push(d);
  }
  const manifest: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPES.dockerManifest, config: configDesc, layers };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const manifestDescriptor: Descriptor = { mediaType: MEDIA_TYPES.dockerManifest, digest: sha256Digest(manifestBytes), size: manifestBytes.length };
  const pathOf = (d: Descriptor) => {
    if (d.digest === configDesc.digest) return chosen.Config;
    const p = paths.get(d.digest);
    if (!p) throw new NotFoundError(`Cannot read blob ${d.digest} in ${where}: the image does not use it`, { blob: d.digest });
    return p;
  };
  return makeImageSource({ format: 'docker-archive', location: where, tags: chosen.RepoTags, manifestDescriptor, manifest, manifestBytes, config, configBytes }, files, pathOf);
}
