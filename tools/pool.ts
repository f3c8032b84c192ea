/**
 * `thinpool pool ...`: create, status, extend, dump, restore, check, metadata-snap,
 * set-transaction-id. Everything but `create` and `restore` goes through connectPool (so it works
 * the same when a daemon owns the pool); those two need the pool closed and work on its files.
 */
import type { Command } from 'commander';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, open, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { ExistsError, NotFoundError, UsageError } from '../src/errors.js';
import { FileBlockFile } from '../src/io/block-file.js';
import { connectPool } from '../src/serve/connect.js';
import { checkPoolFiles, dumpFileTo, type PoolService, type ServiceStatus, withFileSink } from '../src/serve/pool-service.js';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { type CheckReport, formatReport } from '../src/thin/check.js';
import { estimateMetadataBytes } from '../src/thin/metadata-size.js';
import { PoolLock } from '../src/thin/pool-lock.js';
import { Pool } from '../src/thin/pool.js';
import { restoreXml } from '../src/thin/restore.js';
import { METADATA_BLOCK_SIZE, parseSize } from '../src/units.js';
import { errorLine, keyValues, formatSize, print, printJson, progressBar, spinner, usageText } from './output.js';
import type { Ctx } from './thinpool.js';

/** Parses a size flag, naming the flag in the error. */
export function sizeOpt(text: string | undefined, flag: string): number | undefined {
  return text === undefined ? undefined : parseSize(text, flag);
}

/** A non-negative integer argument. */
export function intArg(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`Cannot parse ${what} '${text}': expected a non-negative integer`);
  }
  return Number(text);
}

/** `pool status --json`: the keys are stable. */
export function statusJson(s: ServiceStatus): Record<string, unknown> {
  const out: Record<string, unknown> = {
    pool: s.dir,
    transactionId: s.transactionId,
    blockSize: s.blockSize,
    dataBlocks: { used: s.dataBlocks.used, total: s.dataBlocks.total },
    metadataBlocks: { used: s.metadataBlocks.used, total: s.metadataBlocks.total },
    heldRoot: s.heldRoot,
    mode: s.mode,
    needsCheck: s.needsCheck,
    lowWaterMark: s.lowWaterMark,
    autoExtend: s.autoExtend,
    hostFreeBytes: s.hostFreeBytes,
    catalog: s.catalog,
    outsideChanges: s.outsideChanges,
    devices: s.devices,
  };
  if (s.exports) out.exports = s.exports;
  if (s.servedBy !== undefined) out.servedBy = s.servedBy;
  return out;
}

/** `pool status` for people. */
export function statusText(s: ServiceStatus): string {
  const bs = s.blockSize;
  const pairs: Array<[string, string]> = [
    ['pool', s.dir],
    ['mode', s.mode + (s.needsCheck ? ' (needs_check is set)' : '')],
    ['block size', formatSize(bs)],
    ['data', usageText(s.dataBlocks.used, s.dataBlocks.total, bs)],
    ['metadata', usageText(s.metadataBlocks.used, s.metadataBlocks.total, METADATA_BLOCK_SIZE)],
    ['low-water mark', formatSize(s.lowWaterMark)],
    ['auto-extend', s.autoExtend.enabled ? `on, by ${formatSize(s.autoExtend.step)} up to ${formatSize(s.autoExtend.max)}` : 'off'],
    ['host free', s.hostFreeBytes < 0 ? 'unknown' : formatSize(s.hostFreeBytes)],
    ['devices', String(s.devices)],
    ['transaction id', String(s.transactionId)],
    ['metadata snapshot', s.heldRoot === null ? 'none' : `held at block ${s.heldRoot}`],
    ['catalog', s.catalog],
  ];
  if (s.outsideChanges) {
    const o = s.outsideChanges;
    const dropped = o.dropped.map((d) => d.name ?? `id:${d.id}`).join(', ') || 'none';
    const unknown = o.unknown.map((id) => `id:${id}`).join(', ') || 'none';
    pairs.push(['outside changes', `at ${o.at}: gone ${dropped}; unnamed ${unknown}`]);
  }
  if (s.exports) {
    pairs.push(['exports', s.exports.length ? s.exports.map((e) => `${e.name} (${e.connections} connection${e.connections === 1 ? '' : 's'}${e.readOnly ? ', read-only' : ''})`).join(', ') : 'none']);
  }
  if (s.servedBy !== undefined) pairs.push(['served by', `pid ${s.servedBy}`]);
  return keyValues(pairs);
}

/** Exists and is a file. */
async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Reads a stream until the `<superblock ...>` start tag; returns its attributes and every chunk read. */
async function sniffSuperblock(input: AsyncIterator<Buffer | string>): Promise<{ attrs: Record<string, string> | undefined; head: Buffer[]; done: boolean }> {
  const head: Buffer[] = [];
  let text = '';
  let done = false;
  while (text.length < 1 << 20) {
    const r = await input.next();
    if (r.done) {
      done = true;
      break;
    }
    const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    head.push(b);
    text += b.toString('latin1');
    const m = /<superblock\b([^>]*)>/.exec(text);
    if (m) {
      const attrs: Record<string, string> = {};
      for (const a of m[1]!.matchAll(/([A-Za-z_]+)\s*=\s*"([^"]*)"/g)) attrs[a[1]!] = a[2]!;
      return { attrs, head, done };
    }
  }
  return { attrs: undefined, head, done };
}

async function* chain(head: Buffer[], rest: AsyncIterator<Buffer | string>, done: boolean): AsyncGenerator<Buffer | string> {
  yield* head;
  if (done) return;
  for (;;) {
    const r = await rest.next();
    if (r.done) return;
    yield r.value;
  }
}

async function* counted(src: AsyncIterable<Buffer | string>, onBytes: (n: number) => void): AsyncGenerator<Buffer | string> {
  let n = 0;
  for await (const c of src) {
    n += typeof c === 'string' ? Buffer.byteLength(c) : c.length;
    onBytes(n);
    yield c;
  }
}

export function registerPool(program: Command, ctx: Ctx): void {
  const pool = program.command('pool').description('create and manage the pool (two sparse files and a catalog in the pool directory)');

  pool
    .command('create')
    .description('create a pool in the pool directory (which must not hold one)')
    .option('--data-size <size>', 'data capacity (the data file\'s apparent size; allocated as written)', '10G')
    .option('--metadata-size <size>', 'metadata file size (default: thin_metadata_size\'s estimate for 1000 devices, at least 2 MiB)')
    .option('--block-size <size>', 'data block size: a multiple of 64K from 64K to 1G', '64K')
    .option('--low-water-mark <size>', 'free space under which the pool auto-extends (default: 10% of the data size)')
    .option('--auto-extend-step <size>', 'capacity added per auto-extension (default: 20% of the data size)')
    .option('--auto-extend-max <size>', 'largest capacity auto-extension reaches (default: 4x the data size)')
    .option('--no-auto-extend', 'never grow the capacity by itself')
    .option('--json', 'print the new pool\'s status as JSON')
    .action(async (o: Record<string, string | boolean | undefined>, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`create a pool in ${dir}`);
      const opts = {
        dir,
        dataSize: sizeOpt(o.dataSize as string, '--data-size')!,
        blockSize: sizeOpt(o.blockSize as string, '--block-size')!,
        autoExtend: o.autoExtend !== false,
        ...(o.metadataSize !== undefined ? { metadataSize: sizeOpt(o.metadataSize as string, '--metadata-size')! } : {}),
        ...(o.lowWaterMark !== undefined ? { lowWaterMark: sizeOpt(o.lowWaterMark as string, '--low-water-mark')! } : {}),
        ...(o.autoExtendStep !== undefined ? { autoExtendStep: sizeOpt(o.autoExtendStep as string, '--auto-extend-step')! } : {}),
        ...(o.autoExtendMax !== undefined ? { autoExtendMax: sizeOpt(o.autoExtendMax as string, '--auto-extend-max')! } : {}),
      };
      const p = await Pool.create(opts);
      let status;
      try {
        status = await p.status();
      } finally {
        await p.close();
      }
      if (o.json) return printJson(statusJson(status));
      print(`created pool ${dir}: ${formatSize(status.dataBlocks.total * status.blockSize)} of data in ${status.dataBlocks.total} blocks of ${formatSize(status.blockSize)}, ${formatSize(status.metadataBlocks.total * METADATA_BLOCK_SIZE)} of metadata`);
    });

  pool
    .command('adopt')
    .description('take over a metadata + data pair made elsewhere (LVM thin, Docker loop-lvm devicemapper/{metadata,data}, a kernel pool) without rewriting them until the first change')
    .requiredOption('--metadata <file>', 'the dm-thin metadata file (or device)')
    .requiredOption('--data <file>', 'the data file (or device)')
    .option('--json', 'print the devices found as JSON')
    .action(async (o: { metadata: string; data: string; json?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`adopt ${o.metadata} and ${o.data} into ${dir}`);
      const p = await Pool.adopt({ dir, metadata: o.metadata, data: o.data });
      let devices;
      let status;
      try {
        devices = await p.devices();
        status = await p.status();
      } finally {
        await p.close();
      }
      if (o.json) return printJson({ pool: dir, blockSize: status.blockSize, dataBlocks: status.dataBlocks, transactionId: status.transactionId, devices });
      print(`adopted ${o.metadata} and ${o.data} as pool ${dir} (linked, not copied: they are not rewritten until the first change)`);
      print(`block size ${formatSize(status.blockSize)}, ${status.dataBlocks.used}/${status.dataBlocks.total} data blocks used, transaction id ${status.transactionId}`);
      if (!devices.length) print('no thin devices found');
      for (const d of devices) print(`found id:${d.id}: ${d.mappedBlocks} mapped blocks (${formatSize(d.mappedBlocks * status.blockSize)}), created at time ${d.creationTime}`);
      if (devices.length) print('name them with thinpool device rename id:N NAME and size them with thinpool device resize NAME --size S');
      print('note: thinpool\'s lock cannot see the kernel or another host: never activate these files elsewhere while thinpool owns them');
    });

  pool
    .command('cleanup')
    .description('release attachments nothing uses (or that a dead daemon left: nbdfuse processes, loop devices, FUSE mounts) and delete devices whose removal waited for that')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`clean up ${ctx.poolDir(cmd)}`);
      const r = await ctx.withService(cmd, (svc) => svc.cleanup());
      if (o.json) return printJson(r);
      for (const l of r.released) print(`released ${l}`);
      for (const d of r.removed) print(`removed ${d} (its removal had waited for its release)`);
      for (const l of r.leftovers) print(`left: ${l}`);
      if (!r.released.length && !r.removed.length && !r.leftovers.length) print('nothing to clean up');
    });

  pool
    .command('status')
    .description('show the pool\'s usage, mode and settings')
    .option('--json', 'print JSON (sizes in bytes, counts in blocks)')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`get the status of ${ctx.poolDir(cmd)}`);
      const s = await ctx.withService(cmd, (svc) => svc.status());
      if (o.json) printJson(statusJson(s));
      else print(statusText(s));
    });

  pool
    .command('extend')
    .description('grow the data capacity and/or the metadata file (sizes are the new totals; +S adds S)')
    .option('--data-size <size>', 'new data capacity, or +SIZE to add')
    .option('--metadata-size <size>', 'new metadata size, or +SIZE to add')
    .action(async (o: { dataSize?: string; metadataSize?: string }, cmd: Command) => {
      ctx.doing(`extend ${ctx.poolDir(cmd)}`);
      if (o.dataSize === undefined && o.metadataSize === undefined) throw new UsageError('Cannot extend the pool: give --data-size and/or --metadata-size');
      await ctx.withService(cmd, async (svc) => {
        const before = await svc.status();
        const rel = (text: string | undefined, flag: string, current: number) => {
          if (text === undefined) return undefined;
          const t = text.trim();
          return t.startsWith('+') ? current + parseSize(t.slice(1), flag) : parseSize(t, flag);
        };
        const dataSize = rel(o.dataSize, '--data-size', before.dataBlocks.total * before.blockSize);
        const metadataSize = rel(o.metadataSize, '--metadata-size', before.metadataBlocks.total * METADATA_BLOCK_SIZE);
        await svc.extend({ ...(dataSize !== undefined ? { dataSize } : {}), ...(metadataSize !== undefined ? { metadataSize } : {}) });
        const after = await svc.status();
        print(`data: ${formatSize(before.dataBlocks.total * before.blockSize)} -> ${formatSize(after.dataBlocks.total * after.blockSize)} (${after.dataBlocks.total} blocks); metadata: ${formatSize(before.metadataBlocks.total * METADATA_BLOCK_SIZE)} -> ${formatSize(after.metadataBlocks.total * METADATA_BLOCK_SIZE)} (${after.metadataBlocks.total} blocks)`);
      });
    });

  pool
    .command('dump')
    .description('write the metadata as XML in thin_dump 0.9\'s form (thin_restore 0.9 and 1.x read it)')
    .option('-o, --output <file>', 'write to FILE instead of stdout')
    .option('--metadata-snap', 'dump the held metadata snapshot (thin_dump -m)')
    .action(async (o: { output?: string; metadataSnap?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`dump ${dir}`);
      const opts = o.metadataSnap ? { metadataSnap: true } : {};
      const bar = spinner('dumping the metadata');
      // The service streams into a file (a daemon writes it itself); stdout gets a temporary one.
      const target = o.output ? resolve(o.output) : join(await mkdtemp(join(tmpdir(), 'thinpool-dump-')), 'dump.xml');
      try {
        let svc: PoolService | undefined;
        try {
          svc = await connectPool(dir);
        } catch (err) {
          // A pool that cannot be opened (damaged metadata, a missing data file): dump what its
          // committed superblock reaches, read-only, as thin_dump would.
          const code = (err as { code?: string }).code;
          if (code !== 'ECORRUPT' && code !== 'EREADONLY' && code !== 'ENOENT' && code !== 'ENOTFOUND') throw err;
          try {
            await withFileSink(target, (sink) => dumpFileTo(join(dir, 'metadata'), sink, opts));
          } catch {
            throw err;
          }
          process.stderr.write(`thinpool: warning: ${errorLine(err)}; dumped the metadata file read-only\n`);
        }
        if (svc) {
          try {
            await svc.dumpTo(target, opts);
          } catch (err) {
            await svc.close().catch(() => undefined);
            throw err;
          }
          await svc.close();
        }
        bar.stop();
        if (!o.output) await pipeline(createReadStream(target), process.stdout, { end: false });
      } finally {
        bar.stop();
        if (!o.output) await rm(dirname(target), { recursive: true, force: true });
      }
    });

  pool
    .command('restore')
    .description('build the pool\'s metadata from XML (thin_dump 0.9 or 1.x, or ours); the pool must not be open. Devices come back unnamed (id:N)')
    .requiredOption('-i, --input <file>', 'XML file, or - for stdin')
    .option('--data-size <size>', 'data capacity (default: nr_data_blocks of the XML; may only grow it)')
    .option('--metadata-size <size>', 'metadata file size (default: the larger of the current file and the estimate for the data size)')
    .option('--force', 'replace the metadata of an existing pool (its data file is kept)')
    .action(async (o: { input: string; dataSize?: string; metadataSize?: string; force?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`restore ${dir}`);
      const dataSize = sizeOpt(o.dataSize, '--data-size');
      const metadataSize = sizeOpt(o.metadataSize, '--metadata-size');
      let input: NodeJS.ReadableStream;
      let inputBytes: number | null = null;
      if (o.input === '-') {
        if (process.stdin.isTTY) throw new UsageError(`Cannot restore ${dir}: stdin is a terminal; give -i FILE or pipe the XML in`);
        input = process.stdin;
      } else {
        inputBytes = (await stat(o.input)).size;
        const rs = createReadStream(o.input);
        await new Promise<void>((resolve, reject) => {
          rs.once('ready', resolve);
          rs.once('error', reject);
        });
        input = rs;
      }
      await mkdir(dir, { recursive: true });
      const metaPath = join(dir, 'metadata');
      if ((await exists(metaPath)) && !o.force) {
        throw new ExistsError(`Cannot restore ${dir}: it already holds a pool; add --force to replace its metadata (the data file is kept)`, { dir });
      }
      const lock = await PoolLock.acquire(dir);
      const tmp = join(dir, 'metadata.restore');
      let summary;
      let createdData = false;
      try {
        const it = (input as AsyncIterable<Buffer | string>)[Symbol.asyncIterator]();
        const { attrs, head, done } = await sniffSuperblock(it);
        const bsSectors = attrs?.data_block_size !== undefined ? Number(attrs.data_block_size) : NaN;
        const xmlBlocks = attrs?.nr_data_blocks !== undefined ? Number(attrs.nr_data_blocks) : NaN;
        let nrDataBlocks: number | undefined;
        if (dataSize !== undefined) {
          if (!(bsSectors > 0)) throw new UsageError(`Cannot restore ${dir}: --data-size needs the XML's data_block_size, and no <superblock> with one was found at the start of the input`);
          nrDataBlocks = Math.floor(dataSize / (bsSectors * 512));
          if (xmlBlocks > nrDataBlocks) {
            throw new UsageError(`Cannot restore ${dir}: --data-size ${formatSize(dataSize)} holds ${nrDataBlocks} blocks, fewer than the XML's nr_data_blocks ${xmlBlocks}`);
          }
        } else if (xmlBlocks === 0) {
          throw new UsageError(`Cannot restore ${dir}: the XML has nr_data_blocks="0" (a thin_dump -m of a metadata snapshot); give --data-size`);
        }
        const blocksForEstimate = nrDataBlocks ?? (xmlBlocks > 0 ? xmlBlocks : 0);
        let metaBytes = metadataSize ?? Math.max(estimateMetadataBytes(blocksForEstimate), (await exists(metaPath)) ? (await stat(metaPath)).size : 0);
        metaBytes = Math.floor(metaBytes / METADATA_BLOCK_SIZE) * METADATA_BLOCK_SIZE;
        await rm(tmp, { force: true });
        const file = await FileBlockFile.open(tmp, { create: true });
        try {
          await file.truncate(metaBytes);
          const bar = progressBar('restoring', inputBytes);
          try {
            summary = await restoreXml(counted(chain(head, it, done), (n) => bar.update(n)), file, nrDataBlocks !== undefined ? { nrDataBlocks } : {});
          } finally {
            bar.stop();
          }
          await file.sync();
        } finally {
          await file.close();
        }
        const dataPath = join(dir, 'data');
        const want = summary.nrDataBlocks * summary.dataBlockSize * 512;
        createdData = !(await exists(dataPath));
        const fh = await open(dataPath, createdData ? 'w' : 'r+');
        try {
          if ((await fh.stat()).size < want) await fh.truncate(want);
          await fh.sync();
        } finally {
          await fh.close();
        }
        await rename(tmp, metaPath);
        const dh = await open(dir, 'r');
        await dh.sync().catch(() => undefined);
        await dh.close();
      } catch (err) {
        await rm(tmp, { force: true });
        throw err;
      } finally {
        await lock.release();
      }
      // Open once: the catalog reconciles the restored devices (unnamed, id:N).
      const devices = await ctx.withService(cmd, (svc) => svc.devices());
      const ids = devices.map((d) => d.name ?? `id:${d.id}`);
      print(`restored ${summary.devices} device${summary.devices === 1 ? '' : 's'} (${ids.join(', ') || 'none'}), ${summary.mappings} mappings, into ${dir}: ${summary.nrDataBlocks} data blocks of ${formatSize(summary.dataBlockSize * 512)}, ${summary.metadataBlocksUsed} of ${summary.nrMetadataBlocks} metadata blocks used`);
      if (devices.some((d) => d.name === null)) print('the XML carries no names: address the devices as id:N, or name them with thinpool device rename id:N NAME');
      if (createdData) print(`note: ${join(dir, 'data')} was created empty, so the mappings read zeros until the original pool's data file is put there`);
    });

  pool
    .command('check')
    .description('check the metadata like thin_check (exit 1 when damage is found)')
    .option('--json', 'print the report as JSON')
    .option('--clear-needs-check', 'when no damage is found, clear needs_check so the pool is writable again (like thin_check --clear-needs-check-flag)')
    .action(async (o: { json?: boolean; clearNeedsCheck?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`check ${dir}`);
      const bar = spinner('checking the metadata');
      let report: CheckReport;
      try {
        report = o.clearNeedsCheck ? await ctx.withService(cmd, (svc) => svc.clearNeedsCheck()) : await checkPool(dir, cmd, ctx);
      } finally {
        bar.stop();
      }
      if (o.json) printJson(report);
      else print(formatReport(report));
      if (!report.ok) ctx.setExitCode(1);
    });

  const snap = pool.command('metadata-snap').description('reserve or release the metadata snapshot (for thin_dump -m and thin_delta -m on a live pool)');
  snap
    .command('reserve')
    .description('take a metadata snapshot (dmsetup message reserve_metadata_snap)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('reserve a metadata snapshot');
      const block = await ctx.withService(cmd, (svc) => svc.metadataSnap('reserve'));
      if (o.json) printJson({ heldRoot: block });
      else print(`reserved a metadata snapshot at block ${block}`);
    });
  snap
    .command('release')
    .description('drop the metadata snapshot (dmsetup message release_metadata_snap)')
    .action(async (_o: unknown, cmd: Command) => {
      ctx.doing('release the metadata snapshot');
      await ctx.withService(cmd, (svc) => svc.metadataSnap('release'));
      print('released the metadata snapshot');
    });

  pool
    .command('set-transaction-id')
    .description('set the user\'s transaction id, from OLD to NEW (dmsetup message set_transaction_id)')
    .argument('<old>', 'the current transaction id')
    .argument('<new>', 'the new transaction id')
    .action(async (oldText: string, newText: string, _o: unknown, cmd: Command) => {
      ctx.doing('set the transaction id');
      const old = intArg(oldText, 'OLD');
      const next = intArg(newText, 'NEW');
      await ctx.withService(cmd, (svc) => svc.setTransactionId(old, next));
      print(`transaction id ${old} -> ${next}`);
    });
}

/**
 * Checks the pool's metadata. A pool nobody has open is checked from its files under the pool's
 * lock (this works on metadata too damaged to open); a pool someone owns is checked through
 * connectPool, which reaches the daemon when one serves it.
 */
async function checkPool(dir: string, cmd: Command, ctx: Ctx): Promise<CheckReport> {
  if (!(await exists(join(dir, 'metadata')))) throw new NotFoundError(`Cannot check ${dir}: no pool there (no metadata file)`, { dir });
  let lock: PoolLock | undefined;
  try {
    lock = await PoolLock.acquire(dir);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ELOCKED' || code === 'EBUSY') return ctx.withService(cmd, (svc) => svc.check());
    // No right to take the lock (someone else's pool, a read-only mount): check the files as they are.
    if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') throw err;
  }
  try {
    return await checkPoolFiles(dir);
  } finally {
    await lock?.release();
  }
}
