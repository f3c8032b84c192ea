/**
 * `thinpool mount DEV DIR [--read-only]`, `thinpool umount DIR`, `thinpool attachments`: file
 * systems on pool devices, through the daemon that owns the pool (src/serve/mounts.ts).
 */
import type { Command } from 'commander';
import { mountDevice, umountDir } from '../src/serve/mounts.js';
import { print, printJson, table } from './output.js';
import type { Ctx } from './thinpool.js';

export function registerMount(program: Command, ctx: Ctx): void {
  program
    .command('mount <dev> <dir>')
    .description('mount the file system a device holds at DIR (needs the pool served: thinpool serve or snapshotter); without root through nbdfuse + fuse2fs')
    .option('--read-only', 'mount read-only (ext4: ro,noload, no journal replay)')
    .option('--json', 'print JSON')
    .action(async (dev: string, dir: string, o: { readOnly?: boolean; json?: boolean }, cmd: Command) => {
      ctx.doing(`mount ${dev} at ${dir}`);
      const r = await ctx.withService(cmd, (svc) => mountDevice(svc, dev, dir, { readOnly: !!o.readOnly }));
      if (o.json) printJson(r);
      else if (r.via === 'fuse2fs') print(`mounted ${r.device} at ${r.dir} (${r.fs}${r.options.includes('ro') ? ', read-only' : ''}) through nbdfuse + fuse2fs: not root, so no kernel mount`);
      else print(`mounted ${r.device} at ${r.dir} (${r.fs} on ${r.source}${r.options.length ? `, ${r.options.join(',')}` : ''})`);
    });

  program
    .command('umount <dir>')
    .alias('unmount')
    .description('unmount what thinpool mount mounted at DIR and release the device')
    .action(async (dir: string, _o: unknown, cmd: Command) => {
      ctx.doing(`unmount ${dir}`);
      const r = await ctx.withService(cmd, (svc) => umountDir(svc, dir));
      print(`unmounted ${r.dir} (${r.device})${r.detached ? '' : '; the device is still open elsewhere: it is released by itself once closed'}`);
    });

  program
    .command('attachments')
    .description('list devices attached as block devices (and their mounts)')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      ctx.doing('list attachments');
      const list = await ctx.withService(cmd, (svc) => svc.attachments());
      if (o.json) return printJson(list);
      print(table(['DEVICE', 'ID', 'PATH', 'METHOD', 'MODE', 'MOUNTS'], list.map((a) => [a.device, String(a.deviceId), a.path ?? '-', a.method, a.readOnly ? 'ro' : 'rw', a.mounts.map((m) => m.dir).join(',') || '-']), ['l', 'r', 'l', 'l', 'l', 'l']));
    });
}
