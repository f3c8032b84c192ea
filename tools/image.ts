/**
 * `thinpool image load|import|save|ls|history|rm|prune`: images as stacks of committed snapshots
 * (src/images). Commands that apply layers (load, import) go to the daemon serving the pool, or
 * start one in this process for their own duration.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import type { ImageResult } from '../src/images/image-service.js';
import type { HistoryRow, ImageSummary, PruneResult } from '../src/images/image-store.js';
import { type Digest, shortDigest } from '../src/images/digest.js';
import { formatSize, print, printJson, table } from './output.js';
import type { Ctx } from './thinpool.js';

/** An ISO time without its fraction: `2024-05-01T10:00:00Z`. */
export function shortTime(t: string | null | undefined): string {
  if (!t) return '-';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : `${d.toISOString().slice(0, 19)}Z`;
}

/** The digest's first 12 hex digits, `-` when none. */
export function short(d: Digest | string | null | undefined): string {
  return d ? shortDigest(d as Digest) : '-';
}

function plural(n: number, what: string): string {
  return `${n} ${what}${n === 1 ? '' : 's'}`;
}

/** What `image load`, `image import` and `container commit` print. */
export function imageResultText(verb: string, r: ImageResult): string {
  const applied = r.layers.filter((l) => !l.reused);
  const lines = [
    `${verb} ${r.names.join(', ')} (manifest ${r.manifest}): ${plural(r.layers.length, 'layer')}, ${applied.length} applied, ${r.layers.length - applied.length} already in the pool`,
  ];
  for (const l of r.layers) {
    const what = l.reused ? 'present' : `applied: ${plural(l.applied?.entries ?? 0, 'entry').replace('entrys', 'entries')}, ${formatSize(l.contentSize ?? 0)} of content`;
    lines.push(`  layer ${l.index + 1}  ${short(l.chainId)}  ${what}`);
  }
  return lines.join('\n');
}

/** What a prune removed, in one line. */
export function pruneText(r: PruneResult): string {
  const parts = [`removed ${plural(r.snapshots.length, 'unused layer snapshot')} and ${plural(r.blobs, 'unused blob')} (${formatSize(r.blobBytes)})`];
  if (r.blobsKept) parts.push(`; blobs kept: ${r.blobsKept}`);
  return parts.join('');
}

/** `image ls` for people. */
export function imagesTable(list: ImageSummary[]): string {
  return table(
    ['NAME', 'IMAGE ID', 'DIGEST', 'LAYERS', 'SIZE', 'POOL', 'CONTAINERS', 'CREATED'],
    list.map((i) => [i.name, short(i.config), short(i.manifest), String(i.layers), i.contentSize === null ? '-' : formatSize(i.contentSize), formatSize(i.poolBytes), String(i.containers), shortTime(i.created)]),
    ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'l'],
  );
}

/** `image history` for people: newest first, as `docker history`. */
export function historyTable(rows: HistoryRow[], blockSize: number | undefined, opts: { noTrunc?: boolean } = {}): string {
  const by = (s: string | null) => {
    const t = (s ?? '').replace(/\s+/g, ' ').trim() || '-';
    return opts.noTrunc || t.length <= 45 ? t : `${t.slice(0, 44)}…`;
  };
  return table(
    ['LAYER', 'DIFF ID', 'CREATED', 'CREATED BY', 'SIZE', 'EXCLUSIVE (POOL)'],
    rows.map((r) => {
      const l = r.layer;
      const excl = l ? `${formatSize(l.exclusiveBytes)} (${plural(l.exclusiveBlocks, 'block')}${blockSize ? ` of ${formatSize(blockSize)}` : ''})` : '-';
      return [l ? String(l.index + 1) : '-', l ? short(l.diffId) : '<none>', shortTime(r.created), by(r.createdBy), l ? (l.contentSize === null ? '?' : formatSize(l.contentSize)) : '0 B', excl];
    }),
    ['r', 'l', 'l', 'l', 'r', 'r'],
  );
}

export function registerImage(program: Command, ctx: Ctx): void {
  const image = program.command('image').description('images: stacks of committed snapshots, one per layer (OCI layouts and docker save archives in, OCI layouts out)');

  image
    .command('load <path>')
    .description('load an image from an OCI image layout (directory or tar; gzip, zstd or plain layers) or a docker save archive; every blob is checked; layers already in the pool are reused')
    .option('--name <name>', 'tag it NAME (repeat for several; default: the names the archive gives it)', (v: string, all: string[] = []) => [...all, v])
    .option('--ref <ref>', 'which image of an archive that holds several')
    .option('--json', 'print JSON')
    .action(async (path: string, o: { name?: string[]; ref?: string; json?: boolean }, cmd: Command) => {
      ctx.doing(`load ${path}`);
      const opts = { ...(o.name ? { names: o.name } : {}), ...(o.ref !== undefined ? { ref: o.ref } : {}) };
      const r = await ctx.withMountingService(cmd, (svc) => svc.imageLoad(resolve(path), opts));
      if (o.json) printJson(r);
      else print(imageResultText('loaded', r));
    });

  image
    .command('import <name> <tar>')
    .description('make a one-layer image NAME from a root file system tar (plain, gzip or zstd), like docker import')
    .option('--json', 'print JSON')
    .action(async (name: string, tar: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`import ${tar} as ${name}`);
      const r = await ctx.withMountingService(cmd, (svc) => svc.imageImport(name, resolve(tar)));
      if (o.json) printJson(r);
      else print(imageResultText('imported', r));
    });

  image
    .command('save <name> <out>')
    .description('write the image as an OCI image layout: a directory, or a tar when OUT ends in .tar (the original blobs, byte for byte)')
    .option('--json', 'print JSON')
    .action(async (name: string, out: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`save ${name} to ${out}`);
      const r = await ctx.withService(cmd, (svc) => svc.imageSave(name, resolve(out)));
      if (o.json) printJson(r);
      else print(`saved ${r.name} (manifest ${r.manifest}) to ${r.out}: an OCI layout ${r.format === 'tar' ? 'tar' : 'directory'}, ${plural(r.blobs, 'blob')}, ${formatSize(r.bytes)}`);
    });

  image
    .command('ls')
    .alias('list')
    .description('list the images: SIZE is their file content (as docker images), POOL the pool space their layers hold')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('list images');
      const list = await ctx.withService(cmd, (svc) => svc.imageList());
      if (o.json) printJson(list);
      else print(imagesTable(list));
    });

  image
    .command('history <name>')
    .description('the layers of an image, newest first: the history of its config, the content size of each layer (as docker history) and the pool space it holds itself (beyond the layer below)')
    .option('--no-trunc', 'do not shorten CREATED BY')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean; trunc?: boolean }, cmd: Command) => {
      ctx.doing(`show the history of ${name}`);
      const { rows, blockSize } = await ctx.withService(cmd, async (svc) => ({ rows: await svc.imageHistory(name), blockSize: (await svc.status()).blockSize }));
      if (o.json) printJson(rows);
      else print(historyTable(rows, blockSize, { noTrunc: o.trunc === false }));
    });

  image
    .command('rm <name>')
    .alias('remove')
    .description('remove the image NAME (refused while a container uses it), then the layers and blobs no image or container needs')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`remove image ${name}`);
      const r = await ctx.withService(cmd, (svc) => svc.imageRemove(name));
      if (o.json) printJson(r);
      else print(`untagged ${r.untagged}; ${pruneText(r)}`);
    });

  image
    .command('prune')
    .description('remove layers and blobs no image or container needs (also what an interrupted load left)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('prune images');
      const r = await ctx.withService(cmd, (svc) => svc.imagePrune());
      if (o.json) printJson(r);
      else print(pruneText(r));
    });
}
