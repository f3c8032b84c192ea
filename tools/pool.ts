/**
 * `thinpool pool ...`: create, status, extend, dump, restore, check, repair (pool-repair.ts),
 * metadata-snap, set-transaction-id. Everything but `create`, `restore` and `repair` goes through
 * connectPool (so it works the same when a daemon owns the pool); those need the pool closed and
 * work on its files.
 */
import type { Command } from 'commander';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { UsageError } from '../src/errors.js';
import { Pool } from '../src/pool/pool.js';
import { restorePool } from '../src/pool/restore-pool.js';
import { checkPool, dumpPool } from '../src/serve/connect.js';
import type { ServiceStatus } from '../src/serve/pool-service.js';
import type { CheckReport } from '../src/thin/check-issues.js';
import { formatReport } from '../src/thin/check-report.js';
import { METADATA_BLOCK_SIZE, parseSize } from '../src/units.js';
import { errorLine, keyValues, formatSize, print, printJson, progressBar, spinner, usageText } from './output.js';
import { registerPoolRepair } from './pool-repair.js';
import type { Ctx } from './thinpool.js';
import { pruneText } from './image.js';

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
    hostFull: s.hostFull,
    catalog: s.catalog,
    outsideChanges: s.outsideChanges,
    devices: s.devices,
  };
  if (s.exports) out.exports = s.exports;
  if (s.servedBy !== undefined) out.servedBy = s.servedBy;
  if (s.memory) out.memory = s.memory;
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
    ['host free', (s.hostFreeBytes < 0 ? 'unknown' : formatSize(s.hostFreeBytes)) + (s.hostFull ? ' (full: writes that need new space fail with ENOSPC)' : '')],
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
  if (s.memory) {
    const m = s.memory;
    pairs.push(['daemon memory', `RSS ${formatSize(m.rssBytes)} (peak ${formatSize(m.peakRssBytes)}); metadata cache ${formatSize(m.metadataCacheBytes)} (${m.metadataCachedBlocks} blocks held); NBD buffer ${formatSize(m.nbdBufferBytes)} (peak ${formatSize(m.nbdBufferPeakBytes)} in use, ${formatSize(m.idleReadBufferBytes)} idle)`]);
  }
  return keyValues(pairs);
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
    .option('--force', 'take the files from another thinpool pool directory that links them (it must be closed; it then refuses to open them)')
    .option('--json', 'print the devices found as JSON')
    .action(async (o: { metadata: string; data: string; force?: boolean; json?: boolean }, cmd: Command) => {
      const dir = ctx.poolDir(cmd);
      ctx.doing(`adopt ${o.metadata} and ${o.data} into ${dir}`);
      const p = await Pool.adopt({ dir, metadata: o.metadata, data: o.data, force: !!o.force });
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
    .description('release attachments nothing uses (or that a dead daemon left: nbdfuse processes, loop devices, FUSE mounts), delete devices whose removal waited for that, and remove image layers and blobs no image or container needs')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`clean up ${ctx.poolDir(cmd)}`);
      const r = await ctx.withService(cmd, (svc) => svc.cleanup());
      if (o.json) return printJson(r);
      for (const l of r.released) print(`released ${l}`);
      for (const d of r.removed) print(`removed ${d} (its removal had waited for its release)`);
      for (const l of r.leftovers) print(`left: ${l}`);
      const images = r.images && (r.images.snapshots.length || r.images.blobs) ? pruneText(r.images) : '';
      if (images) print(images);
      if (!r.released.length && !r.removed.length && !r.leftovers.length && !images) print('nothing to clean up');
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
      // The pool streams into a file (a daemon writes it itself); stdout gets a temporary one.
      const target = o.output ? resolve(o.output) : join(await mkdtemp(join(tmpdir(), 'thinpool-dump-')), 'dump.xml');
      try {
        const { fallback } = await dumpPool(dir, target, opts);
        if (fallback) process.stderr.write(`thinpool: warning: ${errorLine(fallback)}; dumped the metadata file read-only\n`);
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
      let bar: ReturnType<typeof progressBar> | undefined;
      let result;
      try {
        result = await restorePool(dir, input, {
          ...(dataSize !== undefined ? { dataSize } : {}),
          ...(metadataSize !== undefined ? { metadataSize } : {}),
          force: !!o.force,
          onProgress: (n) => (bar ??= progressBar('restoring', inputBytes)).update(n),
        });
      } finally {
        bar?.stop();
      }
      const { summary, createdData } = result;
      // Open once: the catalog reconciles the restored devices (unnamed, id:N).
      const devices = await ctx.withService(cmd, (svc) => svc.devices());
      const ids = devices.map((d) => d.name ?? `id:${d.id}`);
      print(`restored ${summary.devices} device${summary.devices === 1 ? '' : 's'} (${ids.join(', ') || 'none'}), ${summary.mappings} mappings, into ${dir}: ${summary.nrDataBlocks} data blocks of ${formatSize(summary.dataBlockSize * 512)}, ${summary.metadataBlocksUsed} of ${summary.nrMetadataBlocks} metadata blocks used`);
      if (devices.some((d) => d.name === null)) print('the XML carries no names: address the devices as id:N, or name them with thinpool device rename id:N NAME');
      if (summary.replaced) print(`note: ${summary.replaced} mapping element${summary.replaced === 1 ? '' : 's'} mapped a block its device had mapped already; the later one was kept`);
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
        report = o.clearNeedsCheck ? await ctx.withService(cmd, (svc) => svc.clearNeedsCheck()) : await checkPool(dir);
      } finally {
        bar.stop();
      }
      if (o.json) printJson(report);
      else print(formatReport(report));
      if (!report.ok) ctx.setExitCode(1);
    });

  registerPoolRepair(pool, ctx);

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
