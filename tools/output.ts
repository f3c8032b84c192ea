/**
 * What the CLI prints: aligned tables and key/value lists (sizes in binary units), JSON (raw
 * numbers in bytes and blocks), progress bars on a terminal (none when stderr is not a TTY), and
 * the one-line error `thinpool: cannot <action>: <detail>` with its exit code.
 */
import cliProgress from 'cli-progress';
import { ExitCode, exitCodeOf } from '../src/errors.js';
import { formatSize } from '../src/units.js';

export { formatSize };

/** Prints `value` as indented JSON on stdout. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Writes text to stdout, adding the final newline when missing. */
export function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : text + '\n');
}

export type Align = 'l' | 'r';

/**
 * An aligned table: a header row and the rows, columns two spaces apart; `align` gives each
 * column's side (default left).
 * @example table(['NAME', 'SIZE'], [['web', '1.0 GiB']], ['l', 'r'])
 */
export function table(headers: string[], rows: string[][], align: Align[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (align[i] === 'r' ? c.padStart(widths[i]!) : i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .replace(/\s+$/, '');
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** Key/value lines with the values aligned: `key:   value`. */
export function keyValues(pairs: Array<[string, string]>): string {
  const w = Math.max(0, ...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w)}  ${v}`).join('\n') + '\n';
}

/** `used / total (p%)` of a count of blocks of `blockBytes`, in binary units. */
export function usageText(used: number, total: number, blockBytes: number, unit = 'blocks'): string {
  const pct = total ? ((100 * used) / total).toFixed(1) : '0.0';
  return `${formatSize(used * blockBytes)} of ${formatSize(total * blockBytes)} (${pct}%, ${used}/${total} ${unit})`;
}

/** Seconds or milliseconds or microseconds, whichever reads best. */
export function formatDuration(ms: number): string {
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 2 : 0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

// ---- progress ---------------------------------------------------------------------------------

export interface Progress {
  /** Bytes done so far (absolute) and the total when it is known. */
  update(done: number, total?: number | null): void;
  /** Removes the bar. */
  stop(): void;
}

const NO_PROGRESS: Progress = { update() {}, stop() {} };

/** True when progress bars are drawn: stderr is a terminal and THINPOOL_NO_PROGRESS is unset. */
export function progressEnabled(): boolean {
  return !!process.stderr.isTTY && !process.env.THINPOOL_NO_PROGRESS;
}

/**
 * A progress bar on stderr for work measured in bytes, drawn only on a terminal; a no-op
 * otherwise (so piped output has no bar and no ANSI codes).
 */
export function progressBar(label: string, total: number | null): Progress {
  if (!progressEnabled()) return NO_PROGRESS;
  const start = Date.now();
  let knownTotal = total;
  const bar = new cliProgress.SingleBar({
    stream: process.stderr,
    hideCursor: true,
    clearOnComplete: true,
    fps: 8,
    format: (_opts, params) => {
      const secs = Math.max(0.001, (Date.now() - start) / 1000);
      const rate = `${formatSize(Math.round(params.value / secs))}/s`;
      if (!knownTotal) return `${label} ${formatSize(params.value)} | ${rate}`;
      const width = 30;
      const filled = Math.min(width, Math.round(params.progress * width));
      const eta = params.value > 0 ? Math.round(((knownTotal - params.value) * secs) / params.value) : 0;
      return `${label} [${'='.repeat(filled)}${' '.repeat(width - filled)}] ${Math.floor(params.progress * 100)}% | ${formatSize(params.value)} / ${formatSize(knownTotal)} | ${rate} | ETA ${eta}s`;
    },
  });
  bar.start(total ?? 0, 0);
  let stopped = false;
  return {
    update(done, t) {
      if (stopped) return;
      if (t !== undefined && t !== knownTotal) {
        knownTotal = t;
        bar.setTotal(t ?? 0);
      }
      bar.update(done);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      bar.stop();
    },
  };
}

/** A line `label... 3s` on stderr while work of unknown length runs (terminal only). */
export function spinner(label: string): Progress {
  if (!progressEnabled()) return NO_PROGRESS;
  const start = Date.now();
  const frames = ['|', '/', '-', '\\'];
  let i = 0;
  const draw = () => process.stderr.write(`\r${label} ${frames[i++ % frames.length]} ${Math.floor((Date.now() - start) / 1000)}s\x1b[K`);
  draw();
  const timer = setInterval(draw, 150);
  let stopped = false;
  return {
    update() {},
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      process.stderr.write('\r\x1b[K');
    },
  };
}

// ---- errors -----------------------------------------------------------------------------------

/** Cancelled by SIGINT/SIGTERM. */
export const EXIT_INTERRUPTED = 130;
/** The reader of stdout went away (EPIPE): exit quietly as if killed by SIGPIPE, like other Unix tools. */
export const EXIT_BROKEN_PIPE = 141;

/** `ENOENT: no such file or directory, open '/x'` -> `/x: no such file or directory`. */
function systemMessage(err: NodeJS.ErrnoException): string | undefined {
  if (typeof err.code !== 'string' || !err.syscall) return undefined;
  const m = /^[A-Z0-9_]+: ([^,]+)(?:,|$)/.exec(err.message);
  const text = m ? m[1]! : err.message;
  return err.path ? `${err.path}: ${text}` : `${err.syscall}: ${text}`;
}

/**
 * The one-line message for `err`: a library message `Cannot ...` becomes `cannot ...`; anything
 * else (a bare `no device named web`, a system error) is prefixed with the command's `action`.
 * @example errorLine(new NotFoundError('no device named web'), 'snapshot web') === 'cannot snapshot web: no device named web'
 */
export function errorLine(err: unknown, action?: string): string {
  let msg: string;
  if (err instanceof Error) msg = systemMessage(err as NodeJS.ErrnoException) ?? err.message;
  else msg = String(err);
  msg = msg.replace(/\s*\n\s*/g, '; ').trim();
  if (/^cannot /i.test(msg)) return 'c' + msg.slice(1);
  return action ? `cannot ${action}: ${msg}` : msg;
}

/** The exit code for `err` (the contract's mapping; see src/errors.ts). */
export function exitCodeFor(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'ECANCELED' || code === 'ABORT_ERR') return EXIT_INTERRUPTED;
  if (code === 'EPIPE') return EXIT_BROKEN_PIPE;
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return ExitCode.io;
  if (code === 'EISDIR' || code === 'ENOTDIR') return ExitCode.usage;
  return exitCodeOf(err);
}

/** Prints `thinpool: <line>` on stderr. */
export function printError(line: string): void {
  process.stderr.write(`thinpool: ${line}\n`);
}
