/**
 * `thinpool demo` (what `npm start` runs): a pool in a temp dir, a 1 GiB "base" device with a
 * file-system-like layout, two snapshots as "containers" with small changes each, then
 * `device ls`, `pool status`, `pool check`, `device delta` and the time of a snapshot against a
 * copy of the 64 MiB of content (block level: no root, no outside tools, a few seconds). Then, as
 * root with busybox-static and the attach tools, images and containers (demo-images.ts: the
 * seed's "Hello world" layer), and a short first-write comparison against overlayfs copy-up
 * (bench/copyup-demo.ts, from a source checkout: the package does not ship bench/) with its
 * table and chart. What cannot run here is named as skipped.
 */
import type { Command } from 'commander';
import { createCipheriv } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { pathToFileURL } from 'node:url';
import { join, resolve } from 'node:path';
import { connectPool } from '../src/serve/connect.js';
import type { PoolService } from '../src/serve/pool-service.js';
import { formatReport } from '../src/thin/check-report.js';
import { Pool } from '../src/pool/pool.js';
import { GiB, KiB, MiB } from '../src/units.js';
import { deltaJson, deltaText, devicesTable } from './device.js';
import { formatDuration, formatSize, print } from './output.js';
import { imagesDemoProbe, runImagesDemo } from './demo-images.js';
import { statusText } from './pool.js';
import type { Ctx } from './thinpool.js';

const CONTENT_BYTES = 64 * MiB;
const CONTENT_AT = 8 * MiB;
const CHUNK = 4 * MiB;

/** Deterministic pseudo-random bytes (AES-128-CTR of zeros under a fixed key). */
function pseudoRandom(bytes: number, seed: number): Buffer {
  const key = Buffer.alloc(16, seed & 0xff);
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(seed >>> 0, 0);
  return createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(bytes));
}

async function allocated(path: string): Promise<{ apparent: number; allocated: number }> {
  const s = await stat(path);
  return { apparent: s.size, allocated: s.blocks * 512 };
}

function indent(text: string): string {
  return text.replace(/\n$/, '').split('\n').map((l) => `    ${l}`).join('\n');
}

export interface DemoOptions {
  dir?: string;
  keep?: boolean;
  /** Where the lines go (default stdout). */
  out?: (line: string) => void;
  /** Run the images-and-containers part (default true; it needs root and tools). */
  images?: boolean;
  /** Run the first-write comparison (default true). */
  firstWrite?: boolean;
  /** Where the comparison's chart goes (default {@link defaultChart}). */
  chart?: string;
}

/** Runs the demo; returns the pool directory it used. */
export async function runDemo(opts: DemoOptions = {}): Promise<string> {
  const out = opts.out ?? ((l: string) => print(l));
  const t0 = performance.now();
  let madeDir = false;
  let dir: string;
  if (opts.dir) {
    dir = resolve(opts.dir);
    const existed = await readdir(dir).then(() => true, () => false);
    await mkdir(dir, { recursive: true });
    madeDir = !existed;
  } else {
    dir = await mkdtemp(join(tmpdir(), 'thinpool-demo-'));
    madeDir = true;
  }
  const say = (s = '') => out(s);
  const run = (s: string) => out(`$ thinpool ${s}`);
  let svc: PoolService | undefined;
  let created = false;
  try {
    say('thinpool demo: thin provisioning, O(1) snapshots and block-level copy-on-write on two sparse files,');
    say('with the metadata in the Linux dm-thin format. The lines starting with $ are the commands that do the');
    say(`same by hand (with -p ${dir}).`);
    say();

    run('pool create --data-size 4G');
    const p = await Pool.create({ dir, dataSize: 4 * GiB });
    created = true;
    await p.close();
    svc = await connectPool(dir);
    const st0 = await svc.status();
    const bs = st0.blockSize;
    const data0 = await allocated(join(dir, 'data'));
    say(`    ${dir}/data is ${formatSize(data0.apparent)} (the capacity) but takes ${formatSize(data0.allocated)} on the host: space is allocated as it is written.`);
    say(`    ${dir}/metadata is dm-thin metadata (thin_check/thin_dump read it); block size ${formatSize(bs)}.`);
    say();

    run('device create base --size 1G');
    await svc.createDevice('base', GiB);
    say('    A 1 GiB thin device: nothing allocated yet. Writing a file-system-like layout into it:');
    say(`    a 4 KiB superblock at 0, a 256 KiB inode table at 1 MiB, ${formatSize(CONTENT_BYTES)} of "image" content at ${formatSize(CONTENT_AT)},`);
    say('    a 1 MiB journal at 512 MiB (the rest stays unprovisioned and reads as zeros).');
    const content = pseudoRandom(CONTENT_BYTES, 1);
    const tw = performance.now();
    const sb = Buffer.alloc(4 * KiB);
    sb.write('THINPOOL-DEMO-FS v1\n', 0);
    await svc.write('base', 0, sb);
    await svc.write('base', 1 * MiB, pseudoRandom(256 * KiB, 2));
    for (let off = 0; off < CONTENT_BYTES; off += CHUNK) await svc.write('base', CONTENT_AT + off, content.subarray(off, off + CHUNK));
    await svc.write('base', 512 * MiB, pseudoRandom(1 * MiB, 3));
    await svc.flush();
    const writeMs = performance.now() - tw;
    const baseInfo = await svc.device('base');
    say(`    wrote ${formatSize(4 * KiB + 256 * KiB + CONTENT_BYTES + MiB)} in ${formatDuration(writeMs)}; base maps ${baseInfo.mappedBlocks} blocks (${formatSize(baseInfo.mappedBlocks * bs)}) of its 1 GiB.`);
    say();

    run('device snapshot base web');
    let t = performance.now();
    await svc.snapshot('base', 'web');
    const snapMs = performance.now() - t;
    run('device snapshot base db');
    await svc.snapshot('base', 'db');
    say(`    Two "containers" as snapshots of base. The snapshot took ${Math.round(snapMs * 1000)} µs, commit included:`);
    say(`    O(1), no per-block work; all ${baseInfo.mappedBlocks} blocks are now shared by base, web and db.`);
    say();

    say('    Each container writes a few small changes:');
    const used0 = (await svc.status()).dataBlocks.used;
    run(`device write web --offset ${CONTENT_AT + 12345} -   # 1 byte inside the image content`);
    await svc.write('web', CONTENT_AT + 12345, Buffer.from('X'));
    const used1 = (await svc.status()).dataBlocks.used;
    say(`    data blocks in use: ${used0} -> ${used1} (+${used1 - used0}): only the ${formatSize(bs)} block holding that byte was copied.`);
    run(`device write web --offset ${1 * MiB + 8 * KiB} -   # 4 KiB: an inode table entry`);
    await svc.write('web', 1 * MiB + 8 * KiB, Buffer.alloc(4 * KiB, 0x57));
    run(`device write web --offset ${600 * MiB} -   # 10 KiB: a new log file where base has nothing`);
    await svc.write('web', 600 * MiB, Buffer.alloc(10 * KiB, 0x4c));
    run(`device write db --offset ${CONTENT_AT + 32 * MiB} -   # 100 bytes inside the image content`);
    await svc.write('db', CONTENT_AT + 32 * MiB, Buffer.alloc(100, 0x44));
    run(`device write db --offset ${512 * MiB + 4 * KiB} -   # 8 KiB into the journal`);
    await svc.write('db', 512 * MiB + 4 * KiB, Buffer.alloc(8 * KiB, 0x4a));
    await svc.flush();
    const readBack = await svc.read('base', CONTENT_AT + 12345, 1);
    const readWeb = await svc.read('web', CONTENT_AT + 12345, 1);
    say(`    base still reads 0x${readBack.toString('hex')} there, web reads 0x${readWeb.toString('hex')} ('X'): each device sees its own bytes.`);
    say();

    run('device ls');
    const list = await svc.devices();
    say(indent(devicesTable(list, bs)));
    say('    EXCLUSIVE is what only that device maps (web: 3 blocks, db: 2), SHARED what it shares with others.');
    say();

    run('pool status');
    say(indent(statusText(await svc.status())));
    const data1 = await allocated(join(dir, 'data'));
    say(`    host: ${dir}/data takes ${formatSize(data1.allocated)} of its ${formatSize(data1.apparent)}.`);
    say();

    run('pool check');
    say(indent(formatReport(await svc.check())));
    say();

    run('device delta base web');
    say(indent(deltaText(deltaJson('base', 'web', await svc.delta('base', 'web')))));
    say();

    say(`Snapshot vs copy: a full copy of the ${formatSize(CONTENT_BYTES)} of content into a new device (read, write, commit):`);
    run('device create copy --size 1G   # then read base, write copy');
    await svc.createDevice('copy', GiB);
    t = performance.now();
    for (let off = 0; off < CONTENT_BYTES; off += CHUNK) {
      const buf = await svc.read('base', CONTENT_AT + off, CHUNK);
      await svc.write('copy', CONTENT_AT + off, buf);
    }
    await svc.flush();
    const copyMs = performance.now() - t;
    await svc.remove('copy');
    say(`    snapshot: ${Math.round(snapMs * 1000)} µs    copy: ${Math.round(copyMs * 1000)} µs (${formatDuration(copyMs)}, ${formatSize(Math.round(CONTENT_BYTES / (copyMs / 1000)))}/s)    -> the snapshot is ${Math.max(1, Math.round(copyMs / snapMs))}x faster,`);
    say('    and it costs no data blocks until something is written. (The copy device was removed again.)');
    say();
    await svc.close();
    svc = undefined;

    const skipped: string[] = [];
    if (opts.images !== false) {
      const probe = await imagesDemoProbe();
      if (probe.skip) skipped.push(`images and containers: ${probe.skip}`);
      else {
        await runImagesDemo(probe.busybox!, say, run, { ...(opts.keep ? { keep: true } : {}) });
        say();
      }
    } else skipped.push('images and containers: --no-images');
    if (opts.firstWrite !== false) await firstWritePart(say, opts.chart ?? defaultChart(), skipped);
    else skipped.push('first-write comparison: --no-first-write');
    say(skipped.length ? `Skipped here: ${skipped.join('; ')}.` : 'Nothing skipped.');
    say(`demo done in ${formatDuration(performance.now() - t0)}; ${opts.keep ? `pool kept in ${dir} (try: thinpool -p ${dir} device ls)` : `removed ${dir}`}.`);
    return dir;
  } finally {
    if (svc) await svc.close().catch(() => undefined);
    if (!opts.keep) {
      if (madeDir) await rm(dir, { recursive: true, force: true });
      else if (created) for (const f of ['metadata', 'data', 'catalog.0', 'catalog.1', 'lock']) await rm(join(dir, f), { force: true });
    }
  }
}

/** $TMPDIR/thinpool-demo-first-write-UID.svg (one per user: another user's file is not writable). */
export function defaultChart(): string {
  return join(tmpdir(), `thinpool-demo-first-write-${process.getuid?.() ?? 0}.svg`);
}

/** The comparison module, when this is a source checkout (the package does not ship bench/). */
async function loadCopyupDemo(): Promise<typeof import('../bench/copyup-demo.js') | null> {
  const url = new URL('../bench/copyup-demo.js', import.meta.url);
  const there = await stat(url).then(() => true, () => false);
  return there ? ((await import(pathToFileURL(url.pathname).href)) as typeof import('../bench/copyup-demo.js')) : null;
}

async function firstWritePart(say: (s?: string) => void, chart: string, skipped: string[]): Promise<void> {
  const mod = await loadCopyupDemo();
  if (!mod) {
    skipped.push('first-write comparison: the benchmark code (bench/) is not part of the installed package; run npm start in a checkout');
    return;
  }
  say('First write of 4 KiB into the middle of a file after a snapshot, against file copy-up (the copyup suite\'s');
  say('peers, system mode as each system does it by default; 3 samples per cell after a warm-up; full suite: npm run bench -- copyup):');
  const r = await mod.demoFirstWrite({ chartFile: chart });
  for (const s of r.skipped) {
    say(`    skipped ${s.label}: ${s.reason}`);
    skipped.push(`${s.label} in the first-write comparison: ${s.reason}`);
  }
  say(indent(r.table));
  say('    copy-up copies the whole file before the write (bytes copied = the file), thinpool one 64 KiB block, whatever the size.');
  say(`    chart: ${r.chartFile} (comparison took ${formatDuration(r.seconds * 1000)})`);
  say();
}

export function registerDemo(program: Command, ctx: Ctx): void {
  program
    .command('demo')
    .description('show what thinpool does, in a temporary pool (what npm start runs)')
    .option('--dir <dir>', 'make the pool here instead of a temp dir (it must not hold a pool)')
    .option('--keep', 'keep the pool afterwards')
    .option('--no-images', 'skip the images-and-containers part (root only anyway)')
    .option('--no-first-write', 'skip the first-write comparison against overlayfs copy-up')
    .option('--chart <file>', 'where the comparison\'s chart goes (default $TMPDIR/thinpool-demo-first-write-UID.svg)')
    .action(async (o: { dir?: string; keep?: boolean; images: boolean; firstWrite: boolean; chart?: string }) => {
      ctx.doing('run the demo');
      await runDemo({ ...(o.dir !== undefined ? { dir: o.dir } : {}), ...(o.chart !== undefined ? { chart: resolve(o.chart) } : {}), keep: !!o.keep, images: o.images, firstWrite: o.firstWrite });
    });
}
