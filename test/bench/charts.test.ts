/**
 * The benchmark chart renderer (Vega-Lite compiled to Vega, rendered headless in Node) produces
 * well-formed SVG documents with the marks the data asks for: a bar per value with its label, a
 * line per (series, dash) pair on log axes, and stacked charts in one document.
 */
import { SaxesParser } from 'saxes';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { barChart, lineChart, renderSvg } from '../../bench/charts.js';

interface Parsed {
  root: string;
  width: number;
  /** Element counts by name. */
  elements: Map<string, number>;
  /** Counts of <g> elements by class (e.g. "mark-rect role-mark"). */
  groups: Map<string, number>;
  /** Every text node. */
  texts: string[];
}

/** Parses an SVG document with a strict XML parser (throws on malformed XML). */
function parseSvg(svg: string): Parsed {
  const p = new SaxesParser();
  const out: Parsed = { root: '', width: 0, elements: new Map(), groups: new Map(), texts: [] };
  p.on('opentag', (t) => {
    if (!out.root) {
      out.root = t.name;
      out.width = Number(t.attributes.width);
    }
    out.elements.set(t.name, (out.elements.get(t.name) ?? 0) + 1);
    if (t.name === 'g' && typeof t.attributes.class === 'string') out.groups.set(t.attributes.class, (out.groups.get(t.attributes.class) ?? 0) + 1);
  });
  p.on('text', (t) => {
    if (t.trim()) out.texts.push(t.trim());
  });
  p.on('error', (e) => {
    throw e;
  });
  p.write(svg).close();
  return out;
}

test('a bar chart renders one bar and one value label per entry', async () => {
  const svg = await renderSvg([barChart('Sequential I/O', 'MiB/s', [
    { label: 'write, thin', value: 3772 },
    { label: 'write, file', value: 4758 },
    { label: 'read, thin', value: 9.5 },
  ])]);
  const doc = parseSvg(svg);
  assert.is(doc.root, 'svg');
  assert.ok(doc.width > 100);
  const rects = /<g class="mark-rect role-mark[^"]*"[^>]*>(.*?)<\/g>/s.exec(svg);
  assert.ok(rects, 'a group of bar marks');
  assert.is(rects![1]!.match(/<path /g)?.length, 3, 'three bars');
  for (const t of ['Sequential I/O', 'write, thin', 'write, file', 'read, thin', '3,772 MiB/s', '4,758 MiB/s', '9.50 MiB/s']) assert.ok(doc.texts.includes(t), `text ${t}`);
});

test('a log-log line chart draws a line per (series, dash) pair, and stacked charts share one document', async () => {
  const points = [];
  for (const series of ['overlayfs', 'thinpool']) {
    for (const dash of ['system', 'durable']) {
      for (const x of [1, 4, 16, 64]) points.push({ x, y: series === 'overlayfs' ? x * 1000 : 300, series, dash });
    }
  }
  const svg = await renderSvg([
    lineChart('First write', { title: 'file size (MiB)', log: true, values: [1, 4, 16, 64] }, { title: 'ms', log: true }, points, { dashTitle: 'mode' }),
    lineChart('Bytes', { title: 'MiB', log: true }, { title: 'KiB', log: false }, [{ x: 1, y: 1, series: 'a' }, { x: 2, y: 3, series: 'a' }]),
  ]);
  const doc = parseSvg(svg);
  assert.is(doc.root, 'svg');
  const lines = [...svg.matchAll(/<g class="mark-line role-mark[^"]*"[^>]*>(.*?)<\/g>/gs)];
  // Vega draws each line as its own mark group: 2 series x 2 modes in the first chart, 1 in the second.
  assert.is(lines.length, 5, 'five lines');
  for (const l of lines) assert.is(l[1]!.match(/<path /g)?.length, 1, 'one path per line');
  assert.is(lines.filter((l) => /stroke-dasharray="4,2"/.test(l[1]!)).length, 2, "the two durable lines are dashed, the others solid");
  for (const t of ['First write', 'Bytes', 'overlayfs', 'thinpool', 'mode', 'system', 'durable', 'file size (MiB)']) assert.ok(doc.texts.includes(t), `text ${t}`);
  const points0 = [...svg.matchAll(/<g class="mark-symbol role-mark[^"]*"[^>]*>(.*?)<\/g>/gs)];
  assert.is(points0[0]![1]!.match(/<path /g)?.length, 16, 'a point per datum');
});

test.run();
