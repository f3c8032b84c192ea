/**
 * `thinpool serve`: own a pool, export its devices over NBD, answer other commands on the
 * pool's control socket. Runs in the foreground until SIGINT/SIGTERM, then stops accepting,
 * finishes in-flight requests, commits and releases the lock.
 */
import type { Command } from 'commander';
import { UsageError } from '../src/errors.js';
import { DEFAULT_METADATA_CACHE_BYTES, DEFAULT_NBD_BUFFER_BYTES, Daemon } from '../src/serve/daemon.js';
import { readTlsCredentials } from '../src/nbd/tls.js';
import { parseSize } from '../src/units.js';

export interface ServeCliOptions {
  socket?: string;
  listen?: string[];
  listenAny?: boolean;
  default?: string;
  readOnly?: string[];
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPsk?: string;
  /** commander's `--no-early-write-replies`: false when given. */
  earlyWriteReplies?: boolean;
  metadataCache?: string;
  nbdBuffer?: string;
}

/** Adds `--metadata-cache SIZE` and `--nbd-buffer SIZE` to a command that runs the daemon (serve, snapshotter). */
export function withMemoryOptions(cmd: Command): Command {
  return cmd
    .option('--metadata-cache <size>', `memory for cached metadata blocks (dm-bufio's cache in the kernel; default ${DEFAULT_METADATA_CACHE_BYTES / 1048576}M)`)
    .option('--nbd-buffer <size>', `memory for NBD write payloads and read replies in flight, all clients together; past it clients wait (default ${DEFAULT_NBD_BUFFER_BYTES / 1048576}M)`);
}

/** The daemon's memory bounds from {@link withMemoryOptions}' flags (absent ones keep the defaults). */
export function memoryBytes(opts: { metadataCache?: string; nbdBuffer?: string }): { metadataCacheBytes?: number; nbdBufferBytes?: number } {
  return {
    ...(opts.metadataCache !== undefined ? { metadataCacheBytes: parseSize(opts.metadataCache, '--metadata-cache') } : {}),
    ...(opts.nbdBuffer !== undefined ? { nbdBufferBytes: parseSize(opts.nbdBuffer, '--nbd-buffer') } : {}),
  };
}

function parseListen(spec: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(spec);
  if (!m) throw new UsageError(`Cannot listen on '${spec}': expected ADDR:PORT (e.g. 127.0.0.1:10809)`);
  const port = Number(m[3]);
  if (port > 65535) throw new UsageError(`Cannot listen on '${spec}': port out of range`);
  return { host: m[1] ?? m[2]!, port };
}

/** Adds `serve` to the program; `poolDir` resolves the global --pool option. */
export function registerServe(program: Command, poolDir: () => string, run: (fn: () => Promise<void>) => Promise<void>): void {
  const serve = program
    .command('serve')
    .description('own the pool and export its devices over NBD (unix socket POOL/nbd.sock; TCP with --listen)')
    .option('--socket <path>', 'NBD unix socket (default POOL/nbd.sock)')
    .option('--listen <addr:port>', 'also listen on TCP (loopback only unless --listen-any); repeatable', (v: string, prev: string[] = []) => [...prev, v])
    .option('--listen-any', 'allow --listen on addresses other than loopback')
    .option('--tls-cert <file>', 'TLS certificate (PEM) for --listen; TCP clients must then use TLS')
    .option('--tls-key <file>', 'private key (PEM) of --tls-cert')
    .option('--tls-ca <file>', 'CA certificate (PEM): TCP clients must present a certificate it signed')
    .option('--tls-psk <file>', 'pre-shared keys for --listen (psktool format username:hexkey); TCP clients must use TLS-PSK')
    .option('--default <dev>', 'device served for the default export name ""')
    .option('--read-only <dev...>', 'devices exported read-only')
    .option('--no-early-write-replies', 'reply to an NBD write only when its data write completed (default: once it is queued, for writes into blocks the device already owns; reads wait for it, FLUSH covers it)');
  withMemoryOptions(serve)
    .action((opts: ServeCliOptions) =>
      run(async () => {
        const dir = poolDir();
        const tls = readTlsCredentials({ cert: opts.tlsCert, key: opts.tlsKey, ca: opts.tlsCa, psk: opts.tlsPsk });
        if (tls && !opts.listen?.length) throw new UsageError('Cannot use TLS without --listen: TLS applies to TCP listeners (the unix socket is guarded by its file mode)');
        // A daemon outlives whoever reads its output: a closed pipe must not stop it.
        process.stderr.on('error', () => undefined);
        const daemon = await Daemon.start({
          dir,
          ...memoryBytes(opts),
          ...(opts.socket ? { socket: opts.socket } : {}),
          listen: (opts.listen ?? []).map(parseListen),
          listenAny: !!opts.listenAny,
          ...(tls ? { tls } : {}),
          ...(opts.default !== undefined ? { defaultDevice: opts.default } : {}),
          readOnly: opts.readOnly ?? [],
          earlyWriteReplies: opts.earlyWriteReplies !== false,
          log: (m) => process.stderr.write(`thinpool serve: ${m}\n`),
        });
        const scheme = tls ? 'nbds' : 'nbd';
        const tcp = daemon.tcpPorts.map((p, i) => ` ${scheme}://${opts.listen![i]!.replace(/:\d+$/, '')}:${p}/DEVICE`).join('');
        let note = '';
        if (tls) note = `; TCP requires TLS (${tls.kind === 'psk' ? 'psk' : tls.ca !== undefined ? 'x509, client certificates' : 'x509'})`;
        else if (daemon.tcpPorts.length > 0) {
          note = opts.listenAny
            ? '; WARNING: TCP without TLS: anyone who can reach these addresses can read and write the exports (use --tls-cert/--tls-key or --tls-psk)'
            : '; WARNING: TCP without TLS: anyone on this host can read and write the exports (use --tls-cert/--tls-key or --tls-psk)';
        }
        process.stdout.write(`serving ${dir}: nbd+unix:///DEVICE?socket=${daemon.nbdSocket}${tcp} (pid ${process.pid})${note}\n`);
        await new Promise<void>((resolve) => {
          const stop = (sig: string) => {
            process.stderr.write(`thinpool serve: ${sig}: finishing in-flight requests, committing\n`);
            daemon.stop().then(resolve, (err) => {
              process.stderr.write(`thinpool serve: stop failed: ${(err as Error).message}\n`);
              resolve();
            });
          };
          process.once('SIGINT', () => stop('SIGINT'));
          process.once('SIGTERM', () => stop('SIGTERM'));
        });
      }),
    );
}
