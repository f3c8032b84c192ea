/**
 * Charts of the benchmark suites, drawn by Vega-Lite (compiled to a Vega spec) and rendered to
 * SVG in Node by Vega's headless view (`renderer: 'none'`, no canvas needed). A suite builds one
 * or more chart specs with {@link barChart} / {@link lineChart} and renders them, stacked
 * vertically, with {@link renderSvg}.
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { fmt } from './format.js';

/**
 * Text widths. Without a canvas Vega guesses 0.8 em per character, which makes every title and
 * legend twice as wide as drawn and the SVG wide and mostly empty; this estimate uses rough
 * sans-serif advance widths per character class instead (Vega's documented hook for renderers
 * without a canvas: replace `textMetrics.width`).
 */
function emWidth(ch: string): number {
  if ('il.,:;|!\'`'.includes(ch)) return 0.28;
  if ('fjtr()[]/ -'.includes(ch)) return 0.36;
  if ('mw'.includes(ch)) return 0.85;
  if ('MW'.includes(ch)) return 0.95;
  if (ch >= '0' && ch <= '9') return 0.58;
  if (ch >= 'A' && ch <= 'Z') return 0.7;
  return 0.56;
}
interface TextItem {
  fontSize?: number;
  fontWeight?: string | number;
}
(vega as unknown as { textMetrics: { width: (item: TextItem, text: unknown) => number } }).textMetrics.width = (item, text) => {
  let em = 0;
  for (const ch of String(text ?? '').trim()) em += emWidth(ch);
  const bold = /bold|[6-9]00/.test(String(item.fontWeight ?? ''));
  return em * (item.fontSize ?? 11) * (bold ? 1.08 : 1);
};

/** A Vega-Lite single-view (or layered) spec without the top-level properties. */
export type ChartSpec = Record<string, unknown>;

export interface Bar {
  label: string;
  value: number;
}

/** A horizontal bar chart, one bar per label in the given order, the value printed at the bar's end. */
export function barChart(title: string, unit: string, bars: Bar[]): ChartSpec {
  return {
    title: { text: title, anchor: 'start' },
    width: 420,
    height: { step: 22 },
    data: { values: bars.map((b) => ({ label: b.label, value: b.value, text: `${fmt(b.value)} ${unit}` })) },
    encoding: {
      y: { field: 'label', type: 'nominal', sort: null, axis: { title: null, labelLimit: 0 } },
      x: { field: 'value', type: 'quantitative', axis: { title: unit, tickCount: 6, labelOverlap: true }, scale: { zero: true } },
    },
    layer: [
      { mark: { type: 'bar', color: '#4477aa' } },
      { mark: { type: 'text', align: 'left', baseline: 'middle', dx: 4 }, encoding: { text: { field: 'text' } } },
    ],
  };
}

export interface LinePoint {
  x: number;
  y: number;
  /** The line's colour (one per system). */
  series: string;
  /** The line's dash pattern (e.g. one per mode); lines are drawn per (series, dash) pair. */
  dash?: string;
}

export interface Axis {
  title: string;
  log?: boolean;
  /** Tick values (default: Vega's). */
  values?: number[];
}

/** Lines with points: one line per series (and dash), e.g. latency against size on log-log axes. */
export function lineChart(title: string, x: Axis, y: Axis, points: LinePoint[], opts: { seriesTitle?: string; dashTitle?: string; subtitle?: string } = {}): ChartSpec {
  const axis = (a: Axis) => ({ title: a.title, ...(a.values ? { values: a.values } : {}), grid: true, labelOverlap: true });
  const hasDash = points.some((p) => p.dash !== undefined);
  // Log axes end at the data (no rounding out to the next power of ten); linear ones start at zero.
  const scale = (a: Axis, zero: boolean) => (a.log ? { type: 'log', nice: false, padding: 12 } : { type: 'linear', zero });
  return {
    title: { text: title, anchor: 'start', ...(opts.subtitle ? { subtitle: opts.subtitle } : {}) },
    width: 520,
    height: 340,
    data: { values: points.map((p) => ({ ...p, dash: p.dash ?? '' })) },
    encoding: {
      x: { field: 'x', type: 'quantitative', scale: scale(x, false), axis: axis(x) },
      y: { field: 'y', type: 'quantitative', scale: scale(y, true), axis: axis(y) },
      color: { field: 'series', type: 'nominal', sort: null, legend: { title: opts.seriesTitle ?? null, labelLimit: 0, symbolType: 'stroke', symbolStrokeWidth: 3 } },
      tooltip: [{ field: 'series' }, { field: 'x' }, { field: 'y' }],
    },
    layer: [
      {
        mark: { type: 'line', strokeWidth: 2 },
        encoding: hasDash ? { strokeDash: { field: 'dash', type: 'nominal', sort: null, legend: { title: opts.dashTitle ?? null, labelLimit: 0, symbolType: 'stroke', symbolStrokeWidth: 2, symbolSize: 400, symbolStrokeColor: '#333' } } } : {},
      },
      // Points without the dash encoding, so the lines' dash legend shows strokes.
      hasDash ? { mark: { type: 'point', filled: true, size: 30 }, encoding: { detail: { field: 'dash' } } } : { mark: { type: 'point', filled: true, size: 30 } },
    ],
  };
}

/** Renders one chart, or several stacked vertically, to an SVG document. */
export async function renderSvg(charts: ChartSpec[]): Promise<string> {
  const top = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    background: 'white',
    padding: 12,
    config: { font: 'sans-serif', title: { fontSize: 15 }, axis: { labelFontSize: 11, titleFontSize: 12 }, legend: { labelFontSize: 11 } },
    // Each stacked chart keeps its own colours and legend, next to it.
    ...(charts.length === 1 ? charts[0] : { vconcat: charts, spacing: 36, resolve: { scale: { color: 'independent', strokeDash: 'independent' }, legend: { color: 'independent', strokeDash: 'independent' } } }),
  } as unknown as TopLevelSpec;
  const view = new vega.View(vega.parse(compile(top).spec), { renderer: 'none' });
  try {
    return (await view.toSVG()) + '\n';
  } finally {
    view.finalize();
  }
}
