/**
 * Real containers on thinpool against containerd's own overlayfs snapshotter: one private
 * containerd (the test harness's: own root, state, sockets) with `thinpool snapshotter` (a child
 * process on a fresh pool) as its proxy plugin `thinpool`, one image built with umoci (busybox,
 * then a layer with three files of patterned data) unpacked into both snapshotters, and three
 * measures, the snapshotters alternating (the order flipping every round):
 *
 * - **run**: `ctr run --rm --snapshotter S IMAGE ID true`, spawn to exit of `ctr`;
 * - **first-write**: a container runs `dd if=/dev/zero of=FILE bs=4k count=1 seek=MIDDLE
 *   conv=notrunc; sync` on a 256 MiB and a 1 GiB file of the image, timed inside the container by
 *   busybox `adjtimex` stamps (containers-ctr.ts); the container is kept until its snapshot's
 *   space is measured, then removed;
 * - **many**: 100 containers from the image each change 1 byte of a 64 MiB file (sequential
 *   `ctr run` without `--rm`, alternating snapshotters); total time per snapshotter, then the
 *   space the 100 snapshots use (overlayfs: `du` of its snapshot directories; thinpool: the
 *   pool's data blocks), then they are removed.
 *
 * After every container is removed, the suite waits (untimed) until containerd's garbage
 * collector has removed its snapshot, and `sync -f`s the host file system, so no sample pays
 * for the one before. One warm-up round of run and first-write is dropped.
 *
 * BENCH_CONTAINERS_ROUNDS (25), BENCH_CONTAINERS_WRITE_ROUNDS (10), BENCH_CONTAINERS_WRITE_SIZES_MIB
 * (256,1024), BENCH_CONTAINERS_MANY (100), BENCH_CONTAINERS_MANY_MIB (64), BENCH_TINY, BENCH_OUT,
 * BENCH_DIR. Run: npm run bench -- containers (root; writes images/bench-containers.json, .svg, .md).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { loadavg, release } from 'node:os';
import { join } from 'node:path';
import type { PoolService } from '../src/serve/pool-service.js';
import { RemotePoolService } from '../src/serve/remote-pool-service.js';
import { containerdUnavailable, startContainerd, type Containerd } from '../test/support/containerd.js';
import { buildOciImage, ociImageUnavailable } from '../test/support/oci-image.js';
import { startSnapshotter, type SnapshotterHandle } from '../test/support/snapshotter.js';
import {
  firstWriteScript, overlaySnapshotIds, overlaySnapshotsDir, overlaySpace, parseStamps, settle, thinpoolSpace, timedCtr, writeTiming,
  type SnapshotterId, type SpaceProbe,
} from './containers-ctr.js';
import { fmtBytes, fmtMicros } from './format.js';
import { benchDir, envList, envNum, now, printTargets, prng, sourceState, tiny, writeResults } from './harness.js';
import {
  cell, cellOf, containersGoals, file, howOf, LABELS, MiB, type ContainersCell, type ContainersResult, type ContainersSample, writeContainersOutputs,
} from './containers-results.js';

export { containersCharts, containersGoals, writeContainersOutputs, type ContainersCell, type ContainersResult } from './containers-results.js';

/** Removes containers (and their snapshots: containerd's garbage collector removes those afterwards), 25 per `ctr`. */
async function removeContainers(ctd: Containerd, ids: string[]): Promise<void> {
  for (let i = 0; i < ids.length; i += 25) await ctd.ctrOk(['containers', 'rm', ...ids.slice(i, i + 25)], { timeoutMs: 600_000 });
}

export async function containersBench(): Promise<ContainersResult> {
  const why = containerdUnavailable() ?? ociImageUnavailable();
  if (why) throw new Error(`containers: cannot run: ${why}`);
  const TINY = tiny();
  const RUN_ROUNDS = TINY ? 2 : envNum('BENCH_CONTAINERS_ROUNDS', 25);
  const WRITE_ROUNDS = TINY ? 2 : envNum('BENCH_CONTAINERS_WRITE_ROUNDS', 10);
  const SIZES = TINY ? [4, 16] : envList('BENCH_CONTAINERS_WRITE_SIZES_MIB', [256, 1024]);
  const MANY = TINY ? 3 : envNum('BENCH_CONTAINERS_MANY', 100);
  const MANY_MIB = TINY ? 4 : envNum('BENCH_CONTAINERS_MANY_MIB', 64);
  const WARMUP = 1;
  const started = now();
  const loadBefore = loadavg();
  const dir = benchDir('tp-ctd-');
  const systems: SnapshotterId[] = ['thinpool', 'overlayfs'];
  let snap: SnapshotterHandle | undefined;
  let ctd: Containerd | undefined;
  let svc: PoolService | undefined;
  const cells: ContainersCell[] = [];
  try {
    // The files' data: 4 KiB of seeded bytes repeated (gzip keeps the layer small; every file system sees real data).
    const rnd = prng(11);
    const pattern = Uint8Array.from({ length: 4096 }, () => Math.floor(rnd() * 256));
    const fileSizes = [...new Set([MANY_MIB, ...SIZES])].sort((a, b) => a - b);
    const img = await buildOciImage(join(dir, 'image'), {
      tag: 'bench',
      layers: [{ busybox: true }, { files: fileSizes.map((s) => ({ path: file(s), content: pattern, size: s * MiB })) }],
      config: { env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin'], cmd: ['/bin/sh'] },
    });
    const poolDir = join(dir, 'pool');
    snap = await startSnapshotter({ dir: poolDir, address: join(dir, 'snapshotter.sock') });
    // containerd's root (overlayfs's snapshots) beside the pool, on the same file system, unless
    // its sockets' paths would be too long for unix sockets there (then the OS temp dir).
    const parentDir = dir.length + '/thinpool-containerd-XXXXXX/containerd.sock.ttrpc'.length <= 107 ? dir : undefined;
    ctd = await startContainerd({ proxyPlugins: { thinpool: snap.address }, ...(parentDir ? { parentDir } : {}) });
    if (!parentDir) console.log(`containers: containerd's directory is in the OS temp dir (${dir} is too long a path for its sockets)`);
    svc = await RemotePoolService.connect(join(poolDir, 'control.sock'));
    const c = ctd;
    const space: Record<SnapshotterId, SpaceProbe> = { thinpool: thinpoolSpace(svc, poolDir), overlayfs: overlaySpace(c) };
    const importSecs = {} as Record<SnapshotterId, number>;
    for (const s of systems) importSecs[s] = (await timedCtr(c, ['images', 'import', '--snapshotter', s, img.archive])).micros / 1e6;
    const layers: Record<SnapshotterId, number> = { thinpool: await space.thinpool.count(), overlayfs: await space.overlayfs.count() };
    console.log(`containers: image (${fileSizes.map((s) => `${s} MiB`).join(', ')} files) imported: thinpool ${importSecs.thinpool.toFixed(1)} s, overlayfs ${importSecs.overlayfs.toFixed(1)} s`);
    // Untimed, after every removed container: its snapshot gone, the host file system settled.
    const settleAll = async () => {
      for (const s of systems) await settle(space[s], layers[s]);
      execFileSync('sync', ['-f', c.root]);
    };
    const order = (r: number) => (r % 2 === 0 ? systems : [...systems].reverse());

    // ---- run: ctr run --rm ... true ----
    const runs: Record<SnapshotterId, ContainersSample[]> = { thinpool: [], overlayfs: [] };
    for (let r = 0; r < WARMUP + RUN_ROUNDS; r++) {
      const line: string[] = [];
      for (const s of order(r)) {
        const { micros } = await timedCtr(c, ['run', '--rm', '--snapshotter', s, img.name, `run-${s}-${r}`, 'true']);
        await settleAll();
        if (r >= WARMUP) runs[s].push({ round: r, micros, ctrMicros: micros });
        line.push(`${s} ${fmtMicros(micros)}`);
      }
      console.log(`containers: ctr run --rm ... true, round ${r}${r < WARMUP ? ' (warm-up)' : ''}: ${line.join(', ')}`);
    }
    for (const s of systems) cells.push(cell('run', null, s, runs[s]));

    // ---- first write into a file of the image, inside the container ----
    const writes = new Map<string, ContainersSample[]>(SIZES.flatMap((size) => systems.map((s) => [`${size}/${s}`, []])));
    for (let r = 0; r < WARMUP + WRITE_ROUNDS; r++) {
      for (const size of r % 2 === 0 ? SIZES : [...SIZES].reverse()) {
        const line: string[] = [];
        for (const s of order(r)) {
          const id = `write-${size}-${s}-${r}`;
          // ctr can lose the tail of a short-lived container's output (a known race of the
          // runtime's output copy): a sample whose stamps did not all arrive is taken again.
          let before = 0;
          let run: Awaited<ReturnType<typeof timedCtr>> | undefined;
          let stamps: number[] = [];
          for (let attempt = 1; ; attempt++) {
            before = await space[s].bytes();
            run = await timedCtr(c, ['run', '--snapshotter', s, img.name, id, 'sh', '-c', firstWriteScript(file(size), size * MiB)]);
            stamps = parseStamps(run.stdout);
            if (stamps.length === 4 || attempt === 3) break;
            console.log(`containers: ${s}, ${size} MiB, round ${r}: ${stamps.length} of 4 stamps arrived from the container; sample taken again`);
            await removeContainers(c, [id]);
            await settleAll();
          }
          const t = writeTiming(stamps);
          // The container is kept (stopped) until its snapshot is measured.
          const grown = (await space[s].bytes()) - before;
          let copied = grown;
          if (s === 'overlayfs') {
            const newest = overlaySnapshotIds(c).at(-1)!;
            copied = statSync(join(overlaySnapshotsDir(c), String(newest), 'fs', file(size))).blocks * 512;
          }
          await removeContainers(c, [id]);
          await settleAll();
          if (r >= WARMUP) {
            writes.get(`${size}/${s}`)!.push({
              round: r, micros: t.micros, ctrMicros: run.micros, bytesCopied: copied, spaceAfterBytes: grown,
              extraMicros: { dd: t.ddMicros, sync: t.syncMicros, stamp: t.stampMicros },
            });
          }
          line.push(`${s} ${fmtMicros(t.micros)} (dd ${fmtMicros(t.ddMicros)}, sync ${fmtMicros(t.syncMicros)}; ctr ${fmtMicros(run.micros)}; ${fmtBytes(grown)})`);
        }
        console.log(`containers: first write, ${size} MiB, round ${r}${r < WARMUP ? ' (warm-up)' : ''}: ${line.join(', ')}`);
      }
    }
    for (const size of SIZES) for (const s of systems) cells.push(cell('first-write', size, s, writes.get(`${size}/${s}`)!));

    // ---- many containers, each changing 1 byte of a file of the image ----
    const many: Record<SnapshotterId, ContainersSample[]> = { thinpool: [], overlayfs: [] };
    const ids: Record<SnapshotterId, string[]> = { thinpool: [], overlayfs: [] };
    const spaceBefore = { thinpool: await space.thinpool.bytes(), overlayfs: await space.overlayfs.bytes() };
    const hostBefore = { thinpool: await space.thinpool.hostBytes(), overlayfs: await space.overlayfs.hostBytes() };
    const manyStarted = now();
    for (let i = 0; i < MANY; i++) {
      const offset = Math.floor((i + 0.5) * ((MANY_MIB * MiB) / MANY));
      for (const s of order(i)) {
        const id = `many-${s}-${i}`;
        const { micros } = await timedCtr(c, ['run', '--snapshotter', s, img.name, id, 'sh', '-c', `echo -n x | dd of=${file(MANY_MIB)} bs=1 count=1 seek=${offset} conv=notrunc 2>/dev/null`]);
        many[s].push({ round: i, micros, ctrMicros: micros });
        ids[s].push(id);
      }
      if ((i + 1) % 10 === 0 || i + 1 === MANY) console.log(`containers: ${i + 1} of ${MANY} containers per snapshotter (${(now() - manyStarted).toFixed(0)} s)`);
    }
    execFileSync('sync', ['-f', c.root]);
    for (const s of systems) {
      const x = cell('many', MANY_MIB, s, many[s]);
      x.totalMicros = many[s].reduce((a, b) => a + b.micros, 0);
      x.spaceBytes = (await space[s].bytes()) - spaceBefore[s];
      x.hostBytes = (await space[s].hostBytes()) - hostBefore[s];
      cells.push(x);
    }
    for (const s of systems) {
      const t0 = now();
      await removeContainers(c, ids[s]);
      await settle(space[s], layers[s], 600_000);
      cellOf(cells, 'many', s, MANY_MIB)!.removeMicros = (now() - t0) * 1e6;
    }
    for (const s of systems) {
      const x = cellOf(cells, 'many', s, MANY_MIB)!;
      console.log(`containers: ${MANY} containers on ${s}: ${fmtMicros(x.totalMicros!)} in all, ${fmtBytes(x.spaceBytes!)} (host ${fmtBytes(x.hostBytes!)}); removed in ${fmtMicros(x.removeMicros!)}`);
    }

    const goals = containersGoals(cells, SIZES, MANY_MIB);
    printTargets('containers: thinpool snapshotter vs containerd\'s overlayfs', goals.map((g) => ({
      metric: g.goal, thinpool: '', peer: g.detail.length > 60 ? `${g.detail.slice(0, 57)}...` : g.detail, ratio: g.measured ?? NaN, target: g.target, met: g.met === true, ...(g.info ? { info: true } : {}),
    })));
    const loadAfter = loadavg();
    const seconds = now() - started;
    console.log(`containers: suite took ${seconds.toFixed(0)} s; load average ${loadBefore[0]!.toFixed(1)} before, ${loadAfter[0]!.toFixed(1)} after`);
    const result: ContainersResult = {
      suite: 'containers',
      source: sourceState(),
      loadAverage: { before: loadBefore, after: loadAfter },
      ratios: 'median of per-round ratios (both snapshotters measured in the same round); many: ratios of the totals',
      config: {
        runRounds: RUN_ROUNDS, writeRounds: WRITE_ROUNDS, warmup: WARMUP, writeSizesMiB: SIZES, many: MANY, manyMiB: MANY_MIB, tiny: TINY,
        image: `busybox-static, then one layer with ${fileSizes.map((s) => `${file(s)} (${s} MiB)`).join(', ')}: 4 KiB of seeded bytes repeated; built with umoci`,
        imageBytes: statSync(img.archive).size,
        blockSize: (await svc.status()).blockSize,
        kernel: release(),
        thinpool: 'thinpool snapshotter (child process) on a fresh pool, default 10 GiB ext4 base device; containers attach through nbdfuse + a loop device (no kernel nbd module here)',
        timing: 'first-write: busybox adjtimex stamps inside the container (a, b back to back; dd; c; sync; d): figure = (d - b) - 2 (b - a)',
        settle: 'after every removed container, untimed: wait until the snapshotter no longer holds its snapshot (containerd GC), then sync -f the host file system',
      },
      systems: systems.map((id) => ({ id, label: LABELS[id], how: howOf(id) })),
      importSeconds: importSecs,
      cells,
      goals,
      seconds,
    };
    writeResults('bench-containers', result);
    console.log(`\n${await writeContainersOutputs(result)}`);
    return result;
  } finally {
    await svc?.close().catch(() => undefined);
    await ctd?.stop().catch((e: unknown) => console.error(`containers: stopping containerd: ${(e as Error).message}`));
    await snap?.stop().catch(() => snap?.kill());
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  }
}
