/**
 * Metadata as XML in the form of `thin_dump` 0.9 (no `<def>`/`<ref>`), which both the 0.9 and
 * the 1.x `thin_restore` read: devices in id order, mappings in virtual-block order, runs of
 * consecutive virtual and data blocks with equal time merged into `range_mapping`.
 */
import { FileBlockFile } from '../io/block-file.js';
import type { TextSink } from '../io/text-sink.js';
import { type Key, addKey, sameKey } from '../pdata/btree-node.js';
import { type MetadataView, ThinMetadata } from './metadata.js';

export interface DumpOptions {
  /** Dump the held metadata snapshot instead of the live metadata (`thin_dump -m`). */
  metadataSnap?: boolean;
  /** Devices only, no mappings (`--skip-mappings`). */
  skipMappings?: boolean;
  /** Only this device (`--dev-id`). */
  devId?: number;
}

/**
 * Writes the XML dump of `md` to `out`.
 * @example let xml = ''; await dumpXml(md, (s) => { xml += s; });
 */
export async function dumpXml(md: ThinMetadata, out: TextSink, opts: DumpOptions = {}): Promise<void> {
  const view = await md.view(!!opts.metadataSnap);
  await dumpView(view, out, opts);
}

/** Writes the XML dump of a metadata view. */
export async function dumpView(view: MetadataView, out: TextSink, opts: DumpOptions = {}): Promise<void> {
  const sb = view.superblock;
  await out(`<superblock uuid="" time="${sb.time}" transaction="${sb.transactionId}" flags="${sb.flags}" version="${sb.version}" data_block_size="${sb.dataBlockSize}" nr_data_blocks="${view.nrDataBlocks}">\n`);
  for (const d of view.devices) {
    if (opts.devId !== undefined && d.id !== opts.devId) continue;
    await out(`  <device dev_id="${d.id}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transactionId}" creation_time="${d.creationTime}" snap_time="${d.snapshottedTime}">\n`);
    if (!opts.skipMappings) {
      let buf = '';
      let run: { v: Key; d: number; len: number; t: number } | undefined;
      const flush = () => {
        if (!run) return;
        buf += run.len === 1
          ? `    <single_mapping origin_block="${run.v}" data_block="${run.d}" time="${run.t}"/>\n`
          : `    <range_mapping origin_begin="${run.v}" data_begin="${run.d}" length="${run.len}" time="${run.t}"/>\n`;
      };
      await view.walk(d.id, (v, m) => {
        if (run && m.time === run.t && m.block === run.d + run.len && sameKey(v, addKey(run.v, run.len))) {
          run.len++;
          return undefined;
        }
        flush();
        run = { v, d: m.block, len: 1, t: m.time };
        if (buf.length > 1 << 16) {
          const chunk = buf;
          buf = '';
          return out(chunk); // a promise when the sink is full: the walk waits for it
        }
        return undefined;
      });
      flush();
      if (buf) await out(buf);
    }
    await out('  </device>\n');
  }
  await out('</superblock>\n');
}


/**
 * Dumps a metadata file read-only into `out`, without a pool or its lock (what `thin_dump`
 * does; the pool dump falls back to it when the pool cannot be opened).
 */
export async function dumpFileTo(path: string, out: TextSink, opts: DumpOptions): Promise<void> {
  const f = await FileBlockFile.open(path, { readOnly: true });
  try {
    const md = await ThinMetadata.open(f, { readOnly: true });
    await dumpXml(md, out, opts);
  } finally {
    await f.close();
  }
}

/** Dumps a metadata file read-only and returns the XML as a string (small files: tests, tools). */
export async function dumpFile(path: string, opts: DumpOptions): Promise<string> {
  let xml = '';
  await dumpFileTo(path, (s) => {
    xml += s;
  }, opts);
  return xml;
}
