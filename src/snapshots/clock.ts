/**
 * Wall-clock timestamps with sub-millisecond precision for snapshot records. containerd's
 * callers compare a snapshot's times with their own clock in nanoseconds (a snapshot created
 * between two readings of `time.Now()` must say so), which a millisecond `Date` cannot: a
 * time truncated to the millisecond reads as earlier than the caller's first reading.
 *
 * The clock is the monotonic `process.hrtime` plus an offset to the wall clock, measured at the
 * moment `Date.now()` turns to the next millisecond (so the offset is exact to the spin loop's
 * step, about a microsecond). When `Date.now()` and the clock disagree by more than 2 ms (the
 * wall clock was stepped), the offset is measured again. Readings never go backwards and never
 * repeat within one process.
 */

let offsetNs: bigint | undefined;
let last = 0n;

function calibrate(): void {
  const start = Date.now();
  let now = start;
  let hr = process.hrtime.bigint();
  // Spin until the millisecond turns (at most 1 ms, once per calibration).
  while (now === start) {
    hr = process.hrtime.bigint();
    now = Date.now();
  }
  offsetNs = BigInt(now) * 1_000_000n - hr;
}

/** Nanoseconds since the Unix epoch. */
export function nowNs(): bigint {
  if (offsetNs === undefined) calibrate();
  let t = process.hrtime.bigint() + offsetNs!;
  const wall = BigInt(Date.now()) * 1_000_000n;
  if (t - wall > 2_000_000n || wall - t > 2_000_000n) {
    calibrate();
    t = process.hrtime.bigint() + offsetNs!;
  }
  if (t <= last) t = last + 1n;
  last = t;
  return t;
}

/** RFC 3339 with nine fractional digits in UTC, e.g. `2024-05-01T10:00:00.123456789Z`. */
export function formatNs(ns: bigint): string {
  const secs = ns / 1_000_000_000n;
  const frac = ns % 1_000_000_000n;
  const iso = new Date(Number(secs) * 1000).toISOString().slice(0, 19);
  return `${iso}.${frac.toString().padStart(9, '0')}Z`;
}

/** Parses what {@link formatNs} writes (and any RFC 3339 time with 0-9 fractional digits). */
export function parseNs(s: string): bigint {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/.exec(s);
  if (!m) return BigInt(Date.parse(s) || 0) * 1_000_000n;
  const ms = Date.parse(`${m[1]}${m[3]}`);
  return BigInt(ms) * 1_000_000n + BigInt((m[2] ?? '').padEnd(9, '0') || '0');
}

/** The current time as {@link formatNs} writes it. */
export function nowString(): string {
  return formatNs(nowNs());
}
