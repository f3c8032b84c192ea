/**
 * `thinpool container create|mount|umount|diff|commit|rm|ls`: containers as active snapshots of
 * their image's top layer (src/images/container-service.ts). A container is named by its id, a
 * unique prefix of it, or its name, as Docker does. `mount` needs a daemon that keeps serving
 * (`thinpool serve`); diff and commit start one for themselves when none serves the pool.
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { UsageError } from '../src/errors.js';
import type { ContainerSummary } from '../src/images/image-store.js';
import type { Volume } from '../src/images/image-records.js';
import { imageResultText, shortTime } from './image.js';
import { formatSize, print, printJson, table } from './output.js';
import type { Ctx } from './thinpool.js';

/** `HOSTDIR:PATH` (the host directory made absolute). */
export function parseVolume(text: string): Volume {
  const i = text.indexOf(':');
  if (i <= 0 || i === text.length - 1) throw new UsageError(`Cannot use the volume ${JSON.stringify(text)}: expected HOSTDIR:PATH`);
  return { host: resolve(text.slice(0, i)), path: text.slice(i + 1) };
}

/** `container ls` for people. */
export function containersTable(list: ContainerSummary[]): string {
  return table(
    ['CONTAINER ID', 'NAME', 'IMAGE', 'CREATED', 'DEVICE', 'EXCLUSIVE', 'SHARED', 'MOUNTED', 'VOLUMES'],
    list.map((c) => [
      c.id.slice(0, 12), c.name ?? '-', c.image, shortTime(c.created), c.device, formatSize(c.exclusiveBytes), formatSize(c.sharedBytes), c.mounted ?? '-',
      c.volumes.map((v) => `${v.host}:${v.path}`).join(',') || '-',
    ]),
    ['l', 'l', 'l', 'l', 'l', 'r', 'r', 'l', 'l'],
  );
}

export function registerContainer(program: Command, ctx: Ctx): void {
  const container = program.command('container').description('containers: a writable snapshot of an image\'s top layer (C is an id, a unique id prefix, or a name)');

  container
    .command('create <image>')
    .description('make a container of IMAGE (an O(1) snapshot of its top layer) and print its id')
    .option('--name <name>', 'a name to refer to it by')
    .option('-v, --volume <hostdir:path>', 'bind the host directory HOSTDIR at PATH in the container when it is mounted (repeatable; kept on container rm)', (v: string, all: string[] = []) => [...all, v])
    .option('--json', 'print JSON')
    .action(async (imageRef: string, o: { name?: string; volume?: string[]; json?: boolean }, cmd: Command) => {
      ctx.doing(`create a container of ${imageRef}`);
      const volumes = (o.volume ?? []).map(parseVolume);
      const r = await ctx.withService(cmd, (svc) => svc.containerCreate(imageRef, { ...(o.name !== undefined ? { name: o.name } : {}), volumes }));
      if (o.json) printJson(r);
      else print(r.id);
    });

  container
    .command('mount <c>')
    .description('mount the container\'s file system (volumes bound in) and print where; needs the pool served (thinpool serve)')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`mount container ${ref}`);
      const r = await ctx.withService(cmd, (svc) => svc.containerMount(ref));
      if (o.json) printJson(r);
      else print(r.path);
    });

  container
    .command('umount <c>')
    .alias('unmount')
    .description('unmount the container (its volumes first)')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      ctx.doing(`unmount container ${ref}`);
      const r = await ctx.withService(cmd, (svc) => svc.containerUmount(ref));
      print(`unmounted ${r.unmounted.join(', ')}`);
    });

  container
    .command('diff <c>')
    .description('the paths the container added (A), changed (C) and deleted (D) against its image, as docker diff')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`diff container ${ref}`);
      const changes = await ctx.withMountingService(cmd, (svc) => svc.containerDiff(ref));
      if (o.json) printJson(changes);
      else if (changes.length) print(changes.map((c) => `${c.kind} ${c.path}`).join('\n'));
    });

  container
    .command('commit <c> <name>')
    .description('a new image NAME: the container\'s image plus one layer of its changes (deletions as whiteouts); prints the new manifest digest')
    .option('-m, --message <text>', 'a comment for the new layer\'s history entry')
    .option('--json', 'print JSON')
    .option('-v, --verbose', 'show the layers')
    .action(async (ref: string, name: string, o: { message?: string; json?: boolean; verbose?: boolean }, cmd: Command) => {
      ctx.doing(`commit container ${ref} as ${name}`);
      const r = await ctx.withMountingService(cmd, (svc) => svc.containerCommit(ref, name, o.message !== undefined ? { comment: o.message } : {}));
      if (o.json) printJson(r);
      else print(o.verbose ? `${imageResultText('committed', r)}\n${r.manifest}` : r.manifest);
    });

  container
    .command('rm <c>')
    .alias('remove')
    .description('remove the container: frees the pool blocks only it holds; its volume directories stay on the host')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }, cmd: Command) => {
      ctx.doing(`remove container ${ref}`);
      const r = await ctx.withService(cmd, (svc) => svc.containerRemove(ref));
      if (o.json) printJson(r);
      else print(`removed ${r.id}${r.name ? ` (${r.name})` : ''}: ${r.freedBlocks} block${r.freedBlocks === 1 ? '' : 's'} (${formatSize(r.freedBytes)}) ${r.deferred ? 'freed once its device is released' : 'freed'}`);
    });

  container
    .command('ls')
    .alias('list')
    .description('list the containers: EXCLUSIVE is the pool space only the container holds (its writes), SHARED what it shares (its image\'s)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('list containers');
      const list = await ctx.withService(cmd, (svc) => svc.containerList());
      if (o.json) printJson(list);
      else print(containersTable(list));
    });
}
