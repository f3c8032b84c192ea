/**
 * Releasing attachments a dead daemon left behind (see {@link cleanupStaleAttachments}).
 */
import { readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type CleanupReport, unmountDir } from './attach-manager.js';
import { attachDir, readAttachRecords, removeAttachRecord } from './attach-records.js';
import {
  blockDeviceBusy, fuseUnmount, isMountpoint, loopBackingFile, loopDetach, nbdDisconnect, processMatches, runQuiet, waitExit,
} from './host-devices.js';

/**
 * Releases what attachment records left behind by a daemon that is gone: mounts made by
 * `thinpool mount`, loop and NBD devices, nbdfuse processes and their FUSE mounts. The caller
 * owns the pool (its lock), so every record is stale except those `keep` names (the live
 * daemon's own). A daemon killed in the middle of an attach leaves a record that does not name
 * everything yet, so the attachment's conventional paths are searched too: the nbdfuse pid file,
 * processes and loop devices naming the FUSE file, the FUSE mount point; files of attachments
 * without a record are swept as well. Called at daemon start and by `thinpool pool cleanup`.
 */
export async function cleanupStaleAttachments(poolDir: string, opts: { keep?: (deviceId: number) => boolean; log?: (msg: string) => void } = {}): Promise<CleanupReport> {
  const log = opts.log ?? (() => undefined);
  const report: CleanupReport = { released: [], leftovers: [] };
  const dir = attachDir(poolDir);
  const recs = new Map((await readAttachRecords(poolDir, (f) => report.leftovers.push(`unreadable attachment record ${f}`))).map((r) => [r.deviceId, r]));
  const names = await readdir(dir).catch(() => [] as string[]);
  const ids = new Set([...recs.keys(), ...names.map((n) => /^(\d+)\./.exec(n)?.[1]).filter((x): x is string => !!x).map(Number)]);
  for (const id of [...ids].sort((a, b) => a - b)) {
    if (opts.keep?.(id)) continue;
    const r = recs.get(id);
    const what: string[] = [];
    const mountpoint = r?.nbdfuse?.mountpoint ?? join(dir, `${id}.fuse`);
    const file = r?.nbdfuse?.file ?? join(mountpoint, 'dev');
    // The last made first: a volume bound inside a container's mount goes before that mount.
    for (const m of [...(r?.mounts ?? [])].reverse()) {
      if (await unmountDir(m)) what.push(`unmounted ${m.dir}`);
      else {
        await runQuiet(m.via === 'fuse2fs' ? 'fusermount3' : 'umount', m.via === 'fuse2fs' ? ['-uz', m.dir] : ['-l', m.dir]);
        what.push(`lazily unmounted ${m.dir}`);
      }
    }
    if (r?.nbd) {
      await nbdDisconnect(r.nbd).catch(() => undefined);
      what.push(`disconnected ${r.nbd}`);
    }
    for (const loop of new Set([...(r?.loop ? [r.loop] : []), ...(await loopsBackedBy(file))])) {
      if ((await loopBackingFile(loop)) !== file) continue;
      const busy = await blockDeviceBusy(loop).catch(() => false);
      if (await loopDetach(loop, file, 1000)) what.push(`detached ${loop}`);
      else report.leftovers.push(`${loop} (device id ${id}) is ${busy ? 'still mounted somewhere' : 'still open'}; it is set to clear itself once closed`);
    }
    const pidFile = Number((await readFile(join(dir, `${id}.pid`), 'utf8').catch(() => '')).trim());
    for (const pid of new Set([r?.nbdfuse?.pid ?? 0, pidFile, ...(await processesNaming('nbdfuse', file))])) {
      if (!pid || !(await processMatches(pid, 'nbdfuse')) || !(await processMatches(pid, file))) continue;
      process.kill(pid, 'SIGTERM');
      if (!(await waitExit(pid, 3000))) process.kill(pid, 'SIGKILL');
      what.push(`stopped nbdfuse ${pid}`);
    }
    if (await isMountpoint(mountpoint)) {
      if (!(await fuseUnmount(mountpoint))) await fuseUnmount(mountpoint, true);
      if (await isMountpoint(mountpoint)) report.leftovers.push(`FUSE mount ${mountpoint} could not be unmounted`);
      else what.push(`unmounted ${mountpoint}`);
    }
    await rmdir(mountpoint).catch(() => undefined);
    // A record being written when its daemon died is left as N.json.tmp (attach-records.ts).
    for (const ext of ['pid', 'log', 'json.tmp']) await rm(join(dir, `${id}.${ext}`), { force: true });
    await removeAttachRecord(poolDir, id);
    const device = r?.device ?? `id:${id}`;
    report.released.push({ deviceId: id, device, what });
    log(`released the stale attachment of ${device} (id ${id}): ${what.join(', ') || 'nothing was left'}`);
  }
  return report;
}

/** Loop devices whose backing file is `file`. */
async function loopsBackedBy(file: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir('/sys/block').catch(() => [] as string[])) {
    if (/^loop\d+$/.test(d) && (await loopBackingFile(`/dev/${d}`)) === file) out.push(`/dev/${d}`);
  }
  return out;
}

/** Pids of processes whose command line has both `prog` and `text`. */
async function processesNaming(prog: string, text: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(prog) && cmd.includes(text)) out.push(Number(p));
  }
  return out;
}
