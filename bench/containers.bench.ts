/**
 * Containers on thinpool against containerd's own overlayfs snapshotter (issue 9): one private
 * containerd (the test harness's: own root, state, sockets) with `thinpool snapshotter` as its
 * proxy plugin, one busybox-static image (built with umoci) unpacked into both snapshotters, and
 * the start-to-exit time of `ctr run --rm --snapshotter S IMAGE ID true` (the ctr process,
 * spawn to exit: snapshot prepared and mounted, runc container created, run, deleted). The
 * snapshotters alternate, the order flipping every round; one warm-up round is dropped; figures
 * are medians and the ratio is the median of per-round ratios (thinpool / overlayfs).
 *
 * thinpool's Prepare attaches the new snapshot's device (nbdfuse + a loop device, as no kernel
 * NBD module is here) and its removal (containerd's garbage collector, after `--rm`) detaches
 * it: that work is inside the measured run only as far as containerd waits for it.
 *
 * BENCH_CONTAINERS_ROUNDS (default 25). Run: npm run bench -- containers (root; writes
 * images/bench-containers.json and .svg).
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { startContainerd, type Containerd } from '../test/support/containerd.js';
import { buildOciImage } from '../test/support/oci-image.js';
import { startSnapshotter, type SnapshotterHandle } from '../test/support/snapshotter.js';
import { barChart, type ChartSpec } from './charts.js';
import { benchDir, envNum, fmt, now, pairedRatio, printTargets, sourceState, stats, writeCharts, writeResults, type Stats, type TargetRow } from './harness.js';

/** Seconds from spawning `ctr` to its exit; throws on a nonzero exit. */
function timedCtr(ctd: Containerd, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = now();
    const a = [...args];
    if (a[0] === 'run') a.splice(1, 0, '--fifo-dir', ctd.fifoDir, '--runc-root', ctd.runcRoot);
    const child = spawn('ctr', ['--address', ctd.address, '--namespace', ctd.namespace, ...a], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve(now() - t0) : reject(new Error(`ctr ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

export async function containersBench(): Promise<Record<string, unknown>> {
  if (process.getuid?.() !== 0) throw new Error('containers: needs root (containerd, runc, loop devices)');
  const ROUNDS = envNum('BENCH_CONTAINERS_ROUNDS', 25);
  const WARMUP = 1;
  const started = now();
  const loadBefore = loadavg();
  const dir = benchDir('thinpool-bench-ctd-');
  let snap: SnapshotterHandle | undefined;
  let ctd: Containerd | undefined;
  try {
    const img = await buildOciImage(join(dir, 'image'), {
      tag: 'bench',
      layers: [{ busybox: true }, { files: [{ path: '/data/hello.txt', content: 'hello\n' }] }],
      config: { env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin'], cmd: ['/bin/sh'] },
    });
    snap = await startSnapshotter({ dir: join(dir, 'pool'), address: join(dir, 'snapshotter.sock') });
    ctd = await startContainerd({ proxyPlugins: { thinpool: snap.address } });
    const snapshotters = ['thinpool', 'overlayfs'];
    const importSecs: Record<string, number> = {};
    for (const s of snapshotters) importSecs[s] = await timedCtr(ctd, ['images', 'import', '--snapshotter', s, img.archive]);
    console.log(`containers: image imported (thinpool ${importSecs.thinpool!.toFixed(2)} s, overlayfs ${importSecs.overlayfs!.toFixed(2)} s); ${ROUNDS} rounds + ${WARMUP} warm-up of ctr run --rm ... true`);
    const runs: Record<string, number[]> = { thinpool: [], overlayfs: [] };
    for (let r = 0; r < WARMUP + ROUNDS; r++) {
      const order = r % 2 === 0 ? snapshotters : [...snapshotters].reverse();
      for (const s of order) {
        const secs = await timedCtr(ctd, ['run', '--rm', '--snapshotter', s, img.name, `bench-${s}-${r}`, 'true']);
        if (r >= WARMUP) runs[s]!.push(secs * 1000);
        console.log(`containers: ctr run --rm --snapshotter ${s}, round ${r}${r < WARMUP ? ' (warm-up)' : ''}: ${(secs * 1000).toFixed(0)} ms`);
      }
    }
    const st = { thinpool: stats(runs.thinpool!), overlayfs: stats(runs.overlayfs!) };
    const ratio = pairedRatio(runs.thinpool!, runs.overlayfs!);
    const rows: TargetRow[] = [
      { metric: 'ctr run --rm ... true, start to exit', thinpool: `${fmt(st.thinpool.median)} ms`, peer: `${fmt(st.overlayfs.median)} ms (overlayfs)`, ratio, target: '-', met: true, info: true },
    ];
    printTargets('containers: thinpool snapshotter vs overlayfs (ratio = thinpool / overlayfs time; lower is faster)', rows);
    const loadAfter = loadavg();
    console.log(`containers: suite took ${(now() - started).toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
    const result = {
      suite: 'containers',
      source: sourceState(),
      ratios: 'median of per-round ratios (thinpool / overlayfs, both measured in the same round)',
      loadAverage: { before: loadBefore, after: loadAfter },
      config: {
        rounds: ROUNDS, warmup: WARMUP,
        command: 'ctr run --rm --snapshotter S IMAGE ID true (spawn to exit of ctr)',
        image: 'busybox-static + one small file, two layers, built with umoci',
        thinpool: 'thinpool snapshotter (child process), default 10 GiB ext4 base, attach by nbdfuse + loop device',
      },
      importSeconds: importSecs,
      runMs: st,
      samplesMs: runs,
      targets: rows,
    };
    writeResults('bench-containers', result);
    await writeCharts('bench-containers', containersCharts(result));
    return result;
  } finally {
    await ctd?.stop().catch((e: unknown) => console.error(`containers: stopping containerd: ${(e as Error).message}`));
    await snap?.stop().catch(() => snap?.kill());
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
}

/** The containers suite's chart, from its JSON result. */
export function containersCharts(r: { runMs: Record<string, Stats> }): ChartSpec[] {
  return [barChart('ctr run --rm, start to exit (median)', 'ms', Object.entries(r.runMs).map(([label, s]) => ({ label, value: s.median })))];
}
