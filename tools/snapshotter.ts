/**
 * `thinpool snapshotter`: own the pool (like `serve`) and serve containerd's Snapshots API on a
 * unix socket for a proxy plugin. Runs in the foreground until SIGINT/SIGTERM, then releases
 * every attachment, commits and unlocks.
 */
import type { Command } from 'commander';
import { UsageError } from '../src/errors.js';
import { DEFAULT_SNAPSHOTTER_SOCKET } from '../src/serve/snapshotter/defaults.js';
import type { BaseFs } from '../src/snapshots/types.js';
import { formatSize, parseSize } from '../src/units.js';
import { memoryBytes, withMemoryOptions } from './serve.js';

interface SnapshotterCliOptions {
  address: string;
  baseSize?: string;
  fs: string;
  dataSize?: string;
  attach?: string;
  metadataCache?: string;
  nbdBuffer?: string;
}

/** Adds `snapshotter` to the program; `poolDir` resolves the global --pool option. */
export function registerSnapshotter(program: Command, poolDir: () => string, run: (fn: () => Promise<void>) => Promise<void>): void {
  const cmd = program
    .command('snapshotter')
    .description("own the pool and serve containerd's snapshots API (a proxy snapshotter) on a unix socket")
    .option('--address <sock>', 'gRPC unix socket', DEFAULT_SNAPSHOTTER_SOCKET)
    .option('--base-size <size>', 'size of the base file system every snapshot starts from, when it is made (default 10G)')
    .option('--fs <type>', 'file system of the base device when it is made: ext4 or xfs', 'ext4')
    .option('--data-size <size>', 'capacity of the pool when the directory has none yet (sparse; default 100G)')
    .option('--attach <method>', 'how devices become block devices: auto, nbd (kernel), loop (nbdfuse + loop), file (nbdfuse only)', 'auto');
  withMemoryOptions(cmd)
    .action((opts: SnapshotterCliOptions) =>
      run(async () => {
        if (opts.fs !== 'ext4' && opts.fs !== 'xfs') throw new UsageError(`Cannot use --fs ${opts.fs}: use ext4 or xfs`);
        if (!['auto', 'nbd', 'loop', 'file'].includes(opts.attach ?? 'auto')) throw new UsageError(`Cannot use --attach ${opts.attach}: use auto, nbd, loop or file`);
        const dir = poolDir();
        // A daemon outlives whoever reads its output: a closed pipe must not stop it.
        process.stderr.on('error', () => undefined);
        process.stdout.on('error', () => undefined);
        const log = (m: string) => process.stderr.write(`thinpool snapshotter: ${m}\n`);
        // Signals are taken from the start: one that arrives while the daemon starts stops it
        // once it is up (before, the default action killed it half-started).
        const signalled = new Promise<string>((resolve) => {
          process.once('SIGINT', () => resolve('SIGINT'));
          process.once('SIGTERM', () => resolve('SIGTERM'));
        });
        // Loaded here: gRPC is for this command only, not for every other one (nor the memory of `thinpool serve`).
        const { SnapshotterDaemon } = await import('../src/serve/snapshotter/snapshotter-daemon.js');
        const d = await SnapshotterDaemon.start({
          dir,
          address: opts.address,
          ...(opts.baseSize ? { baseSize: parseSize(opts.baseSize, '--base-size') } : {}),
          fs: opts.fs as BaseFs,
          ...(opts.dataSize ? { dataSize: parseSize(opts.dataSize, '--data-size') } : {}),
          attachMethod: (opts.attach ?? 'auto') as 'auto',
          ...memoryBytes(opts),
          log,
        });
        if (d.createdPool) log(`created pool ${dir} (${formatSize(d.pool.md.nrDataBlocks * d.pool.blockSize)}, sparse)`);
        process.stdout.write(`snapshotter on ${d.address} for pool ${dir}; devices attach by ${d.daemon.attacher.method}; NBD nbd+unix:///DEVICE?socket=${d.daemon.nbdSocket} (pid ${process.pid})\n`);
        const sig = await signalled;
        log(`${sig}: releasing attachments, committing`);
        await d.stop().catch((err: unknown) => log(`stop failed: ${(err as Error).message}`));
      }),
    );
}
