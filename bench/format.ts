/** Number formats shared by the suites' logs, tables and charts. */

/** Thousands separators from 100 up, two decimals below. */
export function fmt(n: number): string {
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2);
}

/** 8.5 us, 850 us, 12.3 ms, 4.56 s. */
export function fmtMicros(us: number): string {
  if (us < 1000) return `${us < 10 ? us.toFixed(1) : Math.round(us)} us`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

/** 64 KiB, 1 GiB, 1.01 MiB. */
export function fmtBytes(n: number): string {
  if (n < 0) return `-${fmtBytes(-n)}`;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** 0.36x, 12.50x, 1,234x. */
export function fmtRatio(x: number): string {
  return x >= 100 ? `${Math.round(x).toLocaleString('en-US')}x` : `${x.toFixed(2)}x`;
}
