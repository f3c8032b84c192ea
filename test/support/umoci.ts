/**
 * Drives the real `umoci` for the image tests: a new image in an OCI layout, a bundle to edit
 * and repack (umoci's own differ writes the layer, whiteouts included), layers added verbatim
 * (`umoci raw add-layer`), and `umoci unpack` as the reference for what a rootfs should be.
 * Also a busybox-static rootfs, the base the seed's story starts from.
 */
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, which } from './oracles.js';

/** True when umoci is installed. */
export const haveUmoci = which('umoci') !== null;
/** True when skopeo is installed. */
export const haveSkopeo = which('skopeo') !== null;
/** The static busybox the rootfs is built from, if installed. */
export const BUSYBOX = ['/bin/busybox', '/usr/bin/busybox'].find((p) => which(p) !== null) ?? null;

/** Runs umoci; throws with its stderr when it fails. */
export async function umoci(...args: string[]): Promise<string> {
  const r = await run('umoci', args);
  if (r.code !== 0) throw new Error(`umoci ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** `umoci init` + `umoci new`: an empty image `tag` in a new layout at `layout`. */
export async function newImage(layout: string, tag: string): Promise<void> {
  await umoci('init', '--layout', layout);
  await umoci('new', '--image', `${layout}:${tag}`);
}

/** `umoci unpack` of `layout:tag` into `bundle` (the rootfs is `bundle/rootfs`). */
export async function unpack(layout: string, tag: string, bundle: string): Promise<string> {
  await umoci('unpack', '--image', `${layout}:${tag}`, bundle);
  return join(bundle, 'rootfs');
}

/** `umoci repack`: a new layer from the changes made in `bundle/rootfs` (the bundle then stands for the new image). */
export async function repack(layout: string, tag: string, bundle: string): Promise<void> {
  await umoci('repack', '--refresh-bundle', '--image', `${layout}:${tag}`, bundle);
}

/** `umoci raw add-layer`: appends an uncompressed layer tar verbatim. */
export async function addLayer(layout: string, tag: string, tar: Buffer, scratch: string): Promise<void> {
  const file = join(scratch, `layer-${Date.now()}-${Math.random().toString(16).slice(2)}.tar`);
  await writeFile(file, tar);
  await umoci('raw', 'add-layer', '--image', `${layout}:${tag}`, file);
}

/** A few busybox applet links, as a busybox image has. */
export const APPLETS = ['sh', 'ls', 'cat', 'echo', 'mkdir', 'rm'];

/** Puts the static busybox and applet symlinks into `rootfs/bin`. */
export async function addBusybox(rootfs: string): Promise<void> {
  if (!BUSYBOX) throw new Error('busybox-static is not installed');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await copyFile(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  for (const a of APPLETS) await symlink('busybox', join(rootfs, 'bin', a));
}
