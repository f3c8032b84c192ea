/** Creating and reopening metadata files for tests, with a model kept in step. */
import { join } from 'node:path';
import { FileBlockFile } from '../../src/io/block-file.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import type { Rng } from './rng.js';
import { ThinModel } from './thin-model.js';
import { tempDir } from './tmp.js';

export interface Harness {
  path: string;
  file: FileBlockFile;
  md: ThinMetadata;
  model: ThinModel;
  /** Commits, closes and reopens the file (a clean restart). */
  reopen(): Promise<void>;
  close(): Promise<void>;
}

export async function newHarness(opts: { metadataBlocks?: number; dataBlocks?: number; dataBlockSize?: number; dirtyBlocks?: number } = {}): Promise<Harness> {
  const path = join(tempDir(), 'metadata');
  let file = await FileBlockFile.open(path, { create: true });
  const dataBlockSize = opts.dataBlockSize ?? 128;
  const nrDataBlocks = opts.dataBlocks ?? 100_000;
  const spill = opts.dirtyBlocks === undefined ? {} : { dirtyBlocks: opts.dirtyBlocks, cacheBlocks: opts.dirtyBlocks };
  const md = await ThinMetadata.format(file, { dataBlockSize, nrDataBlocks, nrMetadataBlocks: opts.metadataBlocks ?? 4096, ...spill });
  const h: Harness = {
    path,
    file,
    md,
    model: new ThinModel(dataBlockSize, nrDataBlocks),
    async reopen() {
      await h.md.commit();
      await h.file.close();
      file = await FileBlockFile.open(path);
      h.file = file;
      h.md = await ThinMetadata.open(file, spill);
    },
    async close() {
      await h.file.close();
    },
  };
  return h;
}

/** Maps `vblock` of `id` to a newly allocated data block in both the metadata and the model. */
export async function provision(h: Harness, id: number, vblock: number): Promise<number> {
  const b = await h.md.allocDataBlock();
  if (b === undefined) throw new Error('test pool out of data blocks');
  await h.md.openDevice(id).insert(vblock, b);
  h.model.insert(id, vblock, b);
  return b;
}

/** A random mix of provisioning writes (new or overwriting), single removes and range removes. */
export async function randomChanges(h: Harness, rng: Rng, ids: number[], n: number, span: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const id = rng.pick(ids);
    const v = rng.int(span);
    const r = rng.float();
    if (r < 0.7) await provision(h, id, v);
    else if (r < 0.97) {
      await h.md.openDevice(id).remove(v);
      h.model.remove(id, v);
    } else {
      const len = rng.range(1, 300);
      await h.md.openDevice(id).removeRange(v, v + len);
      h.model.removeRange(id, v, v + len);
    }
  }
}
