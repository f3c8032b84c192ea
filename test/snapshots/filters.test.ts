/**
 * The filter parser against containerd's own filter cases (`filters/filter_test.go`: the same
 * corpus, inputs, matches and error strings, position markers included) and against the Walk
 * filters of containerd's snapshotter suite on a snapshot-shaped adaptor.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type FilterAdaptor, parseFilter, parseFilters } from '../../src/snapshots/filters.js';
import { UsageError } from '../../src/errors.js';

interface Entry {
  name: string;
  other?: string;
  labels?: Record<string, string>;
}

const corpus: Entry[] = [
  { name: 'foo', labels: { foo: 'true' } },
  { name: 'bar' },
  { name: 'foo', labels: { foo: 'present', 'more complex label': 'present' } },
  { name: 'bar', labels: { bar: 'true' } },
  { name: 'fooer', labels: { 'more complex label with \\ and "': 'present' } },
  { name: 'fooer', labels: { 'more complex label with \\ and ".post': 'present' } },
  { name: 'baz', other: 'too complex, yo' },
  { name: 'bazo', other: 'abc' },
  { name: 'compound', labels: { foo: 'omg_asdf.asdf-qwer' } },
];

/** containerd's test adaptor: name and other are present when non-empty, labels by joined path. */
const adapt =
  (e: Entry): FilterAdaptor =>
  (path) => {
    switch (path[0]) {
      case 'name':
        return e.name || undefined;
      case 'other':
        return e.other || undefined;
      case 'labels':
        return e.labels?.[path.slice(1).join('.')];
    }
    return undefined;
  };

const cases: Array<{ name: string; input: string; expected?: number[]; err?: string }> = [
  { name: 'Empty', input: '', expected: [0, 1, 2, 3, 4, 5, 6, 7, 8] },
  { name: 'Present', input: 'name', expected: [0, 1, 2, 3, 4, 5, 6, 7, 8] },
  { name: 'LabelPresent', input: 'labels.foo', expected: [0, 2, 8] },
  { name: 'NameAndLabelPresent', input: 'labels.foo,name', expected: [0, 2, 8] },
  { name: 'LabelValue', input: 'labels.foo==true', expected: [0] },
  { name: 'LabelValuePunctuated', input: 'labels.foo==omg_asdf.asdf-qwer', expected: [8] },
  { name: 'LabelValueNoAltQuoting', input: 'labels.|foo|==omg_asdf.asdf-qwer', err: 'parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered' },
  { name: 'Name', input: 'name==bar', expected: [1, 3] },
  { name: 'NameNotEqual', input: 'name!=bar', expected: [0, 2, 4, 5, 6, 7, 8] },
  { name: 'NameAndLabelPresent2', input: 'name==bar,labels.bar', expected: [3] },
  { name: 'QuotedValue', input: 'other=="too complex, yo"', expected: [6] },
  { name: 'RegexpValue', input: 'other~=[abc]+,name!=foo', expected: [6, 7] },
  { name: 'RegexpQuotedValue', input: 'other~=/[abc]+/,name!=foo', expected: [6, 7] },
  { name: 'RegexpQuotedValue2', input: 'other~=/[abc]{1,2}/,name!=foo', expected: [6, 7] },
  { name: 'RegexpQuotedValueGarbage', input: 'other~=/[abc]{0,1}"\\//,name!=foo', expected: [] },
  { name: 'NameAndLabelValue', input: 'name==bar,labels.bar==true', expected: [3] },
  { name: 'NameAndLabelValueNoMatch', input: 'name==bar,labels.bar==wrong', expected: [] },
  { name: 'LabelQuotedFieldPathPresent', input: 'name==foo,labels."more complex label"', expected: [2] },
  { name: 'LabelQuotedFieldPathPresentWithQuoted', input: 'labels."more complex label with \\\\ and \\""==present', expected: [4] },
  { name: 'LabelQuotedFieldPathPresentWithQuotedEmbed', input: 'labels."more complex label with \\\\ and \\"".post==present', expected: [5] },
  {
    name: 'LabelQuotedFieldPathPresentWithQuotedEmbedInvalid',
    input: 'labels.?"more complex label with \\\\ and \\"".post==present',
    err: 'parse error: [labels. >|?|< "more complex label with \\\\ and \\"".post==present]: expected field or quoted',
  },
  { name: 'TrailingComma', input: 'name==foo,', err: 'parse error: [name==foo,]: expected field or quoted' },
  { name: 'TrailingFieldSeparator', input: 'labels.', err: 'parse error: [labels.]: expected field or quoted' },
  { name: 'MissingValue', input: 'image~=,id?=?fbaq', err: 'parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted' },
  { name: 'FieldQuotedLiteralNotTerminated', input: 'labels.ns/key==value', err: 'parse error: [labels.ns >|/|< key==value]: quoted literal not terminated' },
  { name: 'ValueQuotedLiteralNotTerminated', input: 'labels.key==/value', err: 'parse error: [labels.key== >|/|< value]: quoted literal not terminated' },
];

for (const c of cases) {
  test(`containerd filter case ${c.name}: ${c.input}`, () => {
    if (c.err !== undefined) {
      try {
        parseFilter(c.input);
        assert.unreachable('expected a parse error');
      } catch (err) {
        assert.instance(err, UsageError);
        assert.is((err as UsageError).data.detail, c.err);
        assert.is((err as UsageError).message, `Cannot parse the filter: ${c.err}`);
      }
      return;
    }
    const f = parseFilter(c.input);
    const got = corpus.map((e, i) => (f.match(adapt(e)) ? i : -1)).filter((i) => i >= 0);
    assert.equal(got, c.expected);
  });
}

test('more syntax: spaces between tokens, unsupported operators, escapes, several filters match any', () => {
  const e = adapt({ name: 'a b', labels: { 'x.y': 'v' } });
  assert.ok(parseFilter(' name == "a b"').match(e));
  // As in containerd, space is skipped before a token but not after the last selector.
  assert.throws(() => parseFilter('name=="a b" '), /unexpected input/);
  assert.ok(parseFilter('labels.x.y==v').match(e), 'a dotted label path joins with dots');
  assert.ok(parseFilter('labels."x.y"==v').match(e), 'a quoted field keeps its dot');
  assert.ok(parseFilter('name=="a\\x20b"').match(e), 'hex escape');
  assert.ok(parseFilter('name=="a\\u0020b"').match(e), 'unicode escape');
  assert.ok(parseFilter('name~=|^a b$|').match(e), '|...| quotes a regular expression');
  assert.not.ok(parseFilter('name~=^b').match(e));
  for (const bad of ['name===x', 'name=x', 'name==x,', ',name', 'name=="unterminated', 'name=="bad\\q"', 'name==/re/']) {
    assert.throws(() => parseFilter(bad), (err: Error) => err instanceof UsageError, bad);
  }
  assert.ok(parseFilters(['name==zzz', 'name=="a b"']).match(e));
  assert.not.ok(parseFilters(['name==zzz', 'name==yyy']).match(e));
  assert.ok(parseFilters([]).match(e));
});

// The Walk cases of containerd's snapshotter suite (checkWalk), on snapshot info the way
// the snapshot store adapts it: kind, name, parent ('' when none, always present), labels.
test("the snapshotter suite's Walk filters", () => {
  const gc = { 'containerd.io/gc.root': 'check-walk' };
  const snaps = [
    { name: 'a-np', kind: 'active', parent: '', labels: gc },
    { name: 'p', kind: 'committed', parent: '', labels: gc },
    { name: 'a', kind: 'active', parent: 'p', labels: gc },
    { name: 'v', kind: 'view', parent: 'p', labels: gc },
    { name: 'p-wl', kind: 'committed', parent: '', labels: { ...gc, l: '1' } },
    { name: 'a-wl', kind: 'active', parent: 'p-wl', labels: { ...gc, l: '2' } },
    { name: 'v-wl', kind: 'view', parent: 'p-wl', labels: { ...gc, l: '3' } },
    { name: 'a-np-wl', kind: 'active', parent: '', labels: { ...gc, l: '2' } },
  ];
  const adaptSnap =
    (s: (typeof snaps)[number]): FilterAdaptor =>
    (path) => {
      if (path[0] === 'kind') return s.kind;
      if (path[0] === 'name') return s.name;
      if (path[0] === 'parent') return s.parent;
      if (path[0] === 'labels') return (s.labels as Record<string, string>)[path.slice(1).join('.')];
      return undefined;
    };
  const cases: Array<[string[], string[]]> = [
    [['labels."containerd.io/gc.root"==check-walk'], ['a-np', 'p', 'a', 'v', 'p-wl', 'a-wl', 'v-wl', 'a-np-wl']],
    [['kind==active,labels."containerd.io/gc.root"==check-walk'], ['a-np', 'a', 'a-wl', 'a-np-wl']],
    [['kind==view,labels."containerd.io/gc.root"==check-walk'], ['v', 'v-wl']],
    [['kind==committed,labels."containerd.io/gc.root"==check-walk'], ['p', 'p-wl']],
    [['name==p', 'name==a-np-wl'], ['p', 'a-np-wl']],
    [['name==a-wl,labels.l'], ['a-wl']],
    [['parent==p'], ['a', 'v']],
    [['parent!="",labels."containerd.io/gc.root"==check-walk'], ['a', 'v', 'a-wl', 'v-wl']],
    [['labels.l'], ['p-wl', 'a-wl', 'v-wl', 'a-np-wl']],
    [['labels.l==2'], ['a-wl', 'a-np-wl']],
  ];
  for (const [filters, expected] of cases) {
    const f = parseFilters(filters);
    assert.equal(snaps.filter((s) => f.match(adaptSnap(s))).map((s) => s.name).sort(), [...expected].sort(), filters.join(' | '));
  }
});

test.run();
