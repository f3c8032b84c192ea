#!/usr/bin/env node
/**
 * `thinpool`: the command line. Global options, the command groups (pool, device, demo), and one
 * place where errors become a line on stderr and an exit code: 0 ok, 1 check found damage,
 * 2 usage, 3 not found, 4 no space, 5 locked or busy, 6 metadata damaged or needs_check,
 * 7 I/O error, 130 interrupted.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { withMountingPool, withPool } from '../src/serve/connect.js';
import type { PoolService } from '../src/serve/pool-service.js';
import { registerDemo } from './demo.js';
import { registerDevice } from './device.js';
import { EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, errorLine, exitCodeFor, printError } from './output.js';
import { registerPool } from './pool.js';
import { registerServe } from './serve.js';
import { registerSnapshotter } from './snapshotter.js';
import { registerMount } from './mount.js';
import { registerImage } from './image.js';
import { registerContainer } from './container.js';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

/** The pool directory when `-p` is not given: `$THINPOOL_POOL`, else `/var/lib/thinpool` for root, else `~/.local/share/thinpool`. */
export function defaultPoolDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.THINPOOL_POOL) return env.THINPOOL_POOL;
  if (typeof process.getuid === 'function' && process.getuid() === 0) return '/var/lib/thinpool';
  return join(homedir(), '.local', 'share', 'thinpool');
}

/** What every command action gets from the program. */
export interface Ctx {
  /** The pool directory (global `-p`, else the default), absolute. */
  poolDir(cmd: Command): string;
  /** Names what the command is doing, for the error line `thinpool: cannot <action>: ...`. */
  doing(action: string): void;
  /** Connects to the pool, runs `fn`, and always closes the service (which commits), also on error. */
  withService<T>(cmd: Command, fn: (svc: PoolService) => Promise<T>): Promise<T>;
  /**
   * Like {@link withService} for commands that mount devices: the serving daemon, or one started
   * in this process for the command (stopped on SIGINT/SIGTERM, undoing work in progress).
   */
  withMountingService<T>(cmd: Command, fn: (svc: PoolService) => Promise<T>): Promise<T>;
  /** Aborted on SIGINT/SIGTERM: long copies stop between chunks and clean up. */
  readonly signal: AbortSignal;
  /** Sets the exit status for a successful run (e.g. 1 when a check found damage). */
  setExitCode(code: number): void;
  readonly version: string;
}

async function main(argv: string[]): Promise<number> {
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) process.exit(EXIT_INTERRUPTED);
    process.stderr.write(`\nthinpool: ${sig}: stopping (again to quit at once)\n`);
    controller.abort();
  };
  let handling = false;
  /** Commands that can stop cleanly take the signals (others, like serve, handle them or die by them). */
  const handleSignals = () => {
    if (handling) return;
    handling = true;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  };

  let action: string | undefined;
  let exitCode = 0;
  let current: Command | undefined;
  const ctx: Ctx = {
    poolDir(cmd) {
      const g = cmd.optsWithGlobals() as { pool?: string };
      return resolve(g.pool ?? defaultPoolDir());
    },
    doing(a) {
      action = a;
    },
    withService(cmd, fn) {
      return withPool(ctx.poolDir(cmd), (svc) => {
        for (const n of svc.notices ?? []) process.stderr.write(`thinpool: note: ${n}\n`);
        return fn(svc);
      });
    },
    withMountingService(cmd, fn) {
      return withMountingPool(ctx.poolDir(cmd), fn, { signal: ctx.signal, notice: (n) => process.stderr.write(`thinpool: note: ${n}\n`) });
    },
    get signal() {
      handleSignals();
      return controller.signal;
    },
    setExitCode(code) {
      exitCode = code;
    },
    version: pkg.version,
  };

  const program = new Command('thinpool');
  program
    .description('Thin provisioning on two sparse files: a userspace dm-thin-pool (metadata in the Linux dm-thin format)')
    .option('-p, --pool <dir>', 'pool directory (default: $THINPOOL_POOL, else /var/lib/thinpool as root, ~/.local/share/thinpool otherwise)')
    .exitOverride()
    .configureOutput({ outputError: () => undefined })
    .showSuggestionAfterError(true);
  registerPool(program, ctx);
  registerDevice(program, ctx);
  registerServe(program, () => ctx.poolDir(program), async (fn) => {
    ctx.doing(`serve ${ctx.poolDir(program)}`);
    await fn();
  });
  registerSnapshotter(program, () => ctx.poolDir(program), async (fn) => {
    ctx.doing(`serve snapshots from ${ctx.poolDir(program)}`);
    await fn();
  });
  registerMount(program, ctx);
  registerImage(program, ctx);
  registerContainer(program, ctx);
  registerDemo(program, ctx);
  for (const cmd of allCommands(program)) {
    cmd.version(pkg.version, '-V, --version', 'print the version');
    cmd.helpOption('-h, --help', 'show help for this command');
    if (cmd.commands.length) cmd.hook('preSubcommand', (_parent, sub) => void (current = sub));
  }

  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) return 0;
      const where = current ? commandPath(current) : 'thinpool';
      const msg = err.message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim();
      if (err.code === 'commander.help') return 2;
      printError(`${msg} (see '${where} --help')`);
      return 2;
    }
    const exit = exitCodeFor(err);
    if (exit === EXIT_BROKEN_PIPE) return exit;
    printError(errorLine(err, action));
    if (process.env.THINPOOL_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    return exit;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function allCommands(cmd: Command): Command[] {
  return [cmd, ...cmd.commands.flatMap((c) => allCommands(c as Command))];
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

// A reader that went away (`| head`): the command stops (its writes fail with EPIPE), the pool is
// closed, and the program ends quietly with 141, as if SIGPIPE had killed it.
let brokenPipe = false;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') brokenPipe = true;
  else throw err;
});
const code = await main(process.argv);
if (brokenPipe) process.exit(EXIT_BROKEN_PIPE);
// Exit once stdout has taken everything (stdin left open by a command must not keep us alive).
process.stdout.write('', () => process.exit(brokenPipe ? EXIT_BROKEN_PIPE : code));
