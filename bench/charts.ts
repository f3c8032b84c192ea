/**
 * Charts of the benchmark suites, drawn by Vega-Lite (compiled to a Vega spec) and rendered to
 * SVG in Node by Vega's headless view (`renderer: 'none'`, no canvas needed). A suite builds one
 * or more chart specs with {@link barChart} / {@link lineChart} and renders them, stacked
 * vertically, with {@link renderSvg}.
 */
import { View, parse } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { fmt } from './format.js';

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
      x: { field: 'value', type: 'quantitative', axis: { title: unit }, scale: { zero: true } },
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
  const axis = (a: Axis) => ({ title: a.title, ...(a.values ? { values: a.values } : {}), grid: true });
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
    ...(charts.length === 1 ? charts[0] : { vconcat: charts, spacing: 36 }),
  } as unknown as TopLevelSpec;
  const view = new View(parse(compile(top).spec), { renderer: 'none' });
  try {
    return (await view.toSVG()) + '\n';
  } finally {
    view.finalize();
  }
}
