/**
 * `thinpool device ...`: create, snapshot, rm, rename, resize, info, ls, write, read, discard,
 * import, export, delta. DEV is a name or `id:N`. All through connectPool/PoolService.
 */
import type { Command } from 'commander';
import { createReadStream, createWriteStream, fstatSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { UsageError } from '../src/errors.js';
import type { PoolService } from '../src/serve/pool-service.js';
import { exportDevice, importDevice, readToStream, writeFromStream } from '../src/serve/transfer.js';
import type { DeltaRange } from '../src/thin/delta.js';
import type { DeviceRecord } from '../src/pool/catalog-slots.js';
import type { DeviceListing } from '../src/pool/pool.js';
import { parseSize } from '../src/units.js';
import { formatDuration, formatSize, keyValues, print, printJson, progressBar, table } from './output.js';
import { sizeOpt } from './pool.js';
import type { Ctx } from './thinpool.js';

/** `device ls --json` / `device info --json`: the stable keys. */
export function deviceJson(d: DeviceListing): Record<string, unknown> {
  return {
    name: d.name,
    id: d.id,
    sizeBytes: d.sizeBytes,
    origin: d.origin,
    mappedBlocks: d.mappedBlocks,
    exclusiveBlocks: d.exclusiveBlocks,
    sharedBlocks: d.sharedBlocks,
    creationTime: d.creationTime,
    snapshotTime: d.snapshotTime,
    transactionId: d.transactionId,
    readOnly: d.readOnly,
    // Only on devices that have them (container snapshots), so other pools' JSON stays as it was.
    ...(d.fs ? { fs: d.fs } : {}),
    ...(d.snapshot ? { snapshot: d.snapshot } : {}),
    ...(d.pendingRemoval ? { pendingRemoval: d.pendingRemoval } : {}),
  };
}

function label(d: { name: string | null; id: number }): string {
  return d.name ?? `id:${d.id}`;
}

/** `device ls` for people: sizes in binary units. */
export function devicesTable(devices: DeviceListing[], blockSize: number): string {
  const rows = devices.map((d) => [
    label(d),
    String(d.id),
    formatSize(d.sizeBytes),
    d.origin ?? '-',
    formatSize(d.mappedBlocks * blockSize),
    formatSize(d.exclusiveBlocks * blockSize),
    formatSize(d.sharedBlocks * blockSize),
    String(d.creationTime),
    String(d.snapshotTime),
  ]);
  const heads = ['NAME', 'ID', 'SIZE', 'ORIGIN', 'MAPPED', 'EXCLUSIVE', 'SHARED', 'CTIME', 'STIME'];
  const align: Array<'l' | 'r'> = ['l', 'r', 'r', 'l', 'r', 'r', 'r', 'r', 'r'];
  // Container snapshots (thinpool snapshotter) get a column naming them; other pools never see it.
  if (devices.some((d) => d.snapshot || d.pendingRemoval)) {
    heads.push('SNAPSHOT');
    align.push('l');
    // The image CLI's snapshots (namespace thinpool) are marked as such; containerd's are as they always were.
    devices.forEach((d, i) => rows[i]!.push(d.snapshot ? `${d.snapshot.kind} ${d.snapshot.namespace ? `${d.snapshot.namespace}:` : ''}${d.snapshot.key}` : d.pendingRemoval ? '(removal pending)' : '-'));
  }
  return table(heads, rows, align);
}

function recordJson(r: DeviceRecord): Record<string, unknown> {
  return { name: r.name, id: r.id, sizeBytes: r.sizeBytes, origin: r.origin === null ? null : r.originName ?? `id:${r.origin}` };
}

/** A byte count or offset flag: `4096`, `64K`, `1M`. */
function bytesOpt(text: string, flag: string): number {
  return parseSize(text, flag);
}

export interface DeltaJson {
  left: { dev: string; id: number };
  right: { dev: string; id: number };
  blockSize: number;
  ranges: Array<{ kind: DeltaRange['kind']; offset: number; length: number }>;
}

/** Delta ranges in bytes (`same` ranges only with `all`). */
export function deltaJson(a: string, b: string, d: { left: number; right: number; blockSize: number; ranges: DeltaRange[] }, all = false): DeltaJson {
  return {
    left: { dev: a, id: d.left },
    right: { dev: b, id: d.right },
    blockSize: d.blockSize,
    ranges: d.ranges
      .filter((r) => all || r.kind !== 'same')
      .map((r) => ({ kind: r.kind, offset: Number(r.begin) * d.blockSize, length: r.length * d.blockSize })),
  };
}

const KIND_TEXT: Record<DeltaRange['kind'], string> = {
  same: 'same',
  different: 'different',
  left_only: 'only in left',
  right_only: 'only in right',
};

/** `device delta` for people. */
export function deltaText(j: DeltaJson): string {
  const changed = j.ranges.filter((r) => r.kind !== 'same');
  const bytes = changed.reduce((s, r) => s + r.length, 0);
  const head = `${j.left.dev} (id ${j.left.id}) -> ${j.right.dev} (id ${j.right.id}): ${changed.length} changed range${changed.length === 1 ? '' : 's'}, ${formatSize(bytes)} (${bytes / j.blockSize} block${bytes === j.blockSize ? "" : "s"} of ${formatSize(j.blockSize)})\n`;
  if (!j.ranges.length) return head;
  return head + table(['KIND', 'OFFSET', 'LENGTH', 'END'], j.ranges.map((r) => [KIND_TEXT[r.kind], String(r.offset), formatSize(r.length), String(r.offset + r.length)]), ['l', 'r', 'r', 'r']);
}

/** stdin as a path when it is a regular file (so an import from `< file` can seek holes), else the stream. */
function stdinSource(): string | NodeJS.ReadableStream {
  try {
    if (fstatSync(0).isFile()) return '/dev/stdin';
  } catch {
    // not a file descriptor we can stat
  }
  return process.stdin;
}

async function openInput(path: string): Promise<Readable> {
  const rs = createReadStream(path);
  await new Promise<void>((resolve, reject) => {
    rs.once('ready', resolve);
    rs.once('error', reject);
  });
  return rs;
}

export function registerDevice(program: Command, ctx: Ctx): void {
  const device = program.command('device').description('thin devices: create, snapshot, I/O, import/export (DEV is a name or id:N)');

  device
    .command('create')
    .description('create a thin device (no space is allocated until it is written)')
    .argument('<name>', 'device name')
    .requiredOption('--size <size>', 'virtual size (a multiple of 512)')
    .option('--json', 'print the new device as JSON')
    .action(async (name: string, o: { size: string; json?: boolean }, cmd: Command) => {
      ctx.doing(`create device ${name}`);
      const size = bytesOpt(o.size, '--size');
      const r = await ctx.withService(cmd, (svc) => svc.createDevice(name, size));
      if (o.json) printJson(recordJson(r));
      else print(`created ${name} (id ${r.id}, ${formatSize(size)})`);
    });

  device
    .command('snapshot')
    .description('snapshot DEV as NAME: O(1), every block shared until one side writes it')
    .argument('<dev>', 'origin device')
    .argument('<name>', 'snapshot name')
    .option('--json', 'print the new device as JSON')
    .action(async (dev: string, name: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`snapshot ${dev}`);
      const r = await ctx.withService(cmd, async (svc) => {
        const s = performance.now();
        const rec = await svc.snapshot(dev, name);
        return { rec, ms: performance.now() - s };
      });
      if (o.json) printJson(recordJson(r.rec));
      else print(`created ${name} (id ${r.rec.id}), a snapshot of ${dev}, in ${formatDuration(r.ms)}`);
    });

  device
    .command('rm')
    .alias('remove')
    .description('delete a device (its snapshots live on); blocks only it used are freed')
    .argument('<dev>', 'device')
    .action(async (dev: string, _o: unknown, cmd: Command) => {
      ctx.doing(`remove ${dev}`);
      await ctx.withService(cmd, (svc) => svc.remove(dev));
      print(`removed ${dev}`);
    });

  device
    .command('rename')
    .description('rename a device (or name an unnamed id:N)')
    .argument('<dev>', 'device')
    .argument('<name>', 'new name')
    .action(async (dev: string, name: string, _o: unknown, cmd: Command) => {
      ctx.doing(`rename ${dev}`);
      await ctx.withService(cmd, (svc) => svc.rename(dev, name));
      print(`renamed ${dev} to ${name}`);
    });

  device
    .command('resize')
    .description('change a device\'s size; shrinking discards the blocks past the new end')
    .argument('<dev>', 'device')
    .requiredOption('--size <size>', 'new size (a multiple of 512)')
    .action(async (dev: string, o: { size: string }, cmd: Command) => {
      ctx.doing(`resize ${dev}`);
      const size = bytesOpt(o.size, '--size');
      const before = await ctx.withService(cmd, async (svc) => {
        const g = await svc.geometry(dev);
        await svc.resize(dev, size);
        return g.sizeBytes;
      });
      print(`resized ${dev}: ${formatSize(before)} -> ${formatSize(size)}`);
    });

  device
    .command('info')
    .description('show one device')
    .argument('<dev>', 'device')
    .option('--json', 'print JSON (sizes in bytes, counts in blocks)')
    .action(async (dev: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`show ${dev}`);
      const { d, bs } = await ctx.withService(cmd, async (svc) => ({ d: await svc.device(dev), bs: (await svc.geometry(dev)).blockSize }));
      if (o.json) return printJson(deviceJson(d));
      print(keyValues([
        ['name', label(d)],
        ['id', String(d.id)],
        ['size', `${formatSize(d.sizeBytes)} (${d.sizeBytes} bytes)`],
        ['origin', d.origin ?? '-'],
        ['mapped', `${formatSize(d.mappedBlocks * bs)} (${d.mappedBlocks} blocks of ${formatSize(bs)})`],
        ['exclusive', `${formatSize(d.exclusiveBlocks * bs)} (${d.exclusiveBlocks} blocks)`],
        ['shared', `${formatSize(d.sharedBlocks * bs)} (${d.sharedBlocks} blocks)`],
        ['creation time', String(d.creationTime)],
        ['snapshot time', String(d.snapshotTime)],
        ['transaction id', String(d.transactionId)],
        ['read-only', d.readOnly ? 'yes' : 'no'],
      ]));
    });

  device
    .command('ls')
    .alias('list')
    .description('list devices with thin_ls\'s mapped, exclusive and shared counts')
    .option('--json', 'print JSON (sizes in bytes, counts in blocks)')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('list devices');
      const { list, bs } = await ctx.withService(cmd, async (svc) => ({ list: await svc.devices(), bs: (await svc.status()).blockSize }));
      if (o.json) printJson(list.map(deviceJson));
      else print(list.length ? devicesTable(list, bs) : 'no devices');
    });

  device
    .command('write')
    .description('write FILE (or stdin) into DEV at --offset')
    .argument('<dev>', 'device')
    .argument('[file]', 'input file, or - for stdin (the default)')
    .requiredOption('--offset <n>', 'byte offset in the device (512, 64K, 1M, ...)')
    .action(async (dev: string, file: string | undefined, o: { offset: string }, cmd: Command) => {
      ctx.doing(`write ${dev}`);
      const offset = bytesOpt(o.offset, '--offset');
      if ((file === undefined || file === '-') && process.stdin.isTTY) throw new UsageError(`Cannot write ${dev}: stdin is a terminal; give FILE or pipe the data in`);
      const src = file === undefined || file === '-' ? process.stdin : await openInput(file);
      const n = await ctx.withService(cmd, async (svc) => {
        if (file !== undefined && file !== '-') {
          const { size } = await stat(file);
          const { sizeBytes } = await svc.geometry(dev);
          if (offset + size > sizeBytes) {
            throw new UsageError(`Cannot write ${dev}: ${size} bytes of ${file} at offset ${offset} end past the device (${sizeBytes} bytes)`);
          }
        }
        return writeFromStream(svc, dev, offset, src, { signal: ctx.signal });
      });
      print(`wrote ${n} bytes to ${dev} at offset ${offset}`);
    });

  device
    .command('read')
    .description('read --length bytes of DEV at --offset to stdout (or -o FILE)')
    .argument('<dev>', 'device')
    .requiredOption('--offset <n>', 'byte offset')
    .requiredOption('--length <n>', 'bytes to read')
    .option('-o, --output <file>', 'write to FILE instead of stdout')
    .action(async (dev: string, o: { offset: string; length: string; output?: string }, cmd: Command) => {
      ctx.doing(`read ${dev}`);
      const offset = bytesOpt(o.offset, '--offset');
      const length = bytesOpt(o.length, '--length');
      await ctx.withService(cmd, async (svc) => {
        const { sizeBytes } = await svc.geometry(dev);
        if (offset + length > sizeBytes) throw new UsageError(`Cannot read ${dev}: ${length} bytes at offset ${offset} end past the device (${sizeBytes} bytes)`);
        if (!o.output) return readToStream(svc, dev, offset, length, process.stdout, { signal: ctx.signal });
        const ws = createWriteStream(o.output);
        try {
          await readToStream(svc, dev, offset, length, ws, { signal: ctx.signal });
          await new Promise<void>((resolve, reject) => {
            ws.once('error', reject);
            ws.end(resolve);
          });
        } finally {
          ws.destroy();
        }
      });
    });

  device
    .command('discard')
    .description('unmap the whole blocks inside a byte range (partial blocks at the ends are left as they are)')
    .argument('<dev>', 'device')
    .requiredOption('--offset <n>', 'byte offset')
    .requiredOption('--length <n>', 'bytes')
    .action(async (dev: string, o: { offset: string; length: string }, cmd: Command) => {
      ctx.doing(`discard ${dev}`);
      const offset = bytesOpt(o.offset, '--offset');
      const length = bytesOpt(o.length, '--length');
      const freed = await ctx.withService(cmd, async (svc) => {
        const before = (await svc.device(dev)).mappedBlocks;
        await svc.discard(dev, offset, length);
        return before - (await svc.device(dev)).mappedBlocks;
      });
      print(`discarded ${formatSize(length)} at offset ${offset} of ${dev}: ${freed} block${freed === 1 ? '' : 's'} unmapped`);
    });

  device
    .command('import')
    .description('create NAME and copy FILE (or - for stdin) into it, skipping holes and zeros')
    .argument('<name>', 'new device name')
    .argument('<file>', 'raw image file, or - for stdin')
    .option('--size <size>', 'device size (default: the file\'s size rounded up to 512)')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, file: string, o: { size?: string; json?: boolean }, cmd: Command) => {
      ctx.doing(`import ${name}`);
      const size = sizeOpt(o.size, '--size');
      if (file === '-' && process.stdin.isTTY) throw new UsageError(`Cannot import ${name}: stdin is a terminal; give FILE or pipe the image in`);
      const source = file === '-' ? stdinSource() : file;
      const t0 = performance.now();
      const r = await ctx.withService(cmd, async (svc) => {
        const bar = progressBar(`importing ${name}`, null);
        try {
          return await importDevice(svc, name, source, { ...(size !== undefined ? { sizeBytes: size } : {}), signal: ctx.signal, onProgress: (d, t) => bar.update(d, t) });
        } finally {
          bar.stop();
        }
      });
      const ms = performance.now() - t0;
      if (o.json) return printJson({ ...r, seconds: ms / 1000 });
      print(`imported ${name}: ${formatSize(r.sizeBytes)} device, ${formatSize(r.writtenBytes)} of data written (${formatSize(r.sourceBytes - r.writtenBytes)} of holes and zeros skipped) in ${formatDuration(ms)}`);
    });

  device
    .command('export')
    .description('copy DEV into FILE (holes stay holes in a regular file) or - for stdout')
    .argument('<dev>', 'device')
    .argument('<file>', 'output file, or - for stdout')
    .option('--json', 'print the result as JSON (not with -)')
    .action(async (dev: string, file: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`export ${dev}`);
      if (file === '-' && o.json) throw new UsageError(`Cannot export ${dev}: --json needs an output file (stdout carries the data)`);
      const t0 = performance.now();
      const r = await ctx.withService(cmd, async (svc: PoolService) => {
        const bar = progressBar(`exporting ${dev}`, null);
        try {
          return await exportDevice(svc, dev, file === '-' ? process.stdout : file, { signal: ctx.signal, onProgress: (d, t) => bar.update(d, t) });
        } finally {
          bar.stop();
        }
      });
      const ms = performance.now() - t0;
      if (file === '-') return;
      if (o.json) return printJson({ ...r, seconds: ms / 1000 });
      print(`exported ${dev} to ${file}: ${formatSize(r.sizeBytes)}, ${formatSize(r.mappedBytes)} mapped, ${formatSize(r.writtenBytes)} written in ${formatDuration(ms)}`);
    });

  device
    .command('delta')
    .description('ranges that differ between devices A and B, like thin_delta')
    .argument('<a>', 'left device')
    .argument('<b>', 'right device')
    .option('--all', 'also list the ranges both share')
    .option('--json', 'print JSON (byte offsets and lengths)')
    .action(async (a: string, b: string, o: { json?: boolean; all?: boolean }, cmd: Command) => {
      ctx.doing(`compare ${a} with ${b}`);
      const d = await ctx.withService(cmd, (svc) => svc.delta(a, b));
      const j = deltaJson(a, b, d, !!o.all);
      if (o.json) printJson(j);
      else print(deltaText(j));
    });
}
