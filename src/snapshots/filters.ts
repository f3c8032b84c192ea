/**
 * containerd's filter syntax, as `Walk`/`List` take it (`ctr snapshots ls` filters, the CRI's
 * label queries). A filter string is a comma-separated list of selectors that must all match;
 * several strings match when any of them does:
 *
 * ```
 * selectors := selector ("," selector)*
 * selector  := fieldpath (operator value)?      no operator: the field is present
 * fieldpath := field ("." field)*
 * field     := quoted | [A-Za-z0-9_]+
 * operator  := "==" | "!=" | "~="              ~= is a regular expression
 * value     := quoted | [^\s,]+
 * quoted    := "..." with Go escapes; /.../ and |...| too, after ~= only
 * ```
 *
 * e.g. `kind==active,labels."containerd.io/gc.root"`, `parent!=""`, `name~=/^sha256:/`.
 * Errors name the position the way containerd does: `parse error: [labels. >|?|< x]: expected
 * field or quoted`. Regular expressions are RE2 in containerd and JavaScript's here: the common
 * syntax (classes, repetition, anchors, groups) means the same.
 */
import { UsageError } from '../errors.js';

/** Looks up a field path on the object being filtered: its value, or undefined when absent. */
export type FilterAdaptor = (fieldpath: readonly string[]) => string | undefined;

/** A parsed filter. */
export interface Filter {
  match(adaptor: FilterAdaptor): boolean;
}

type Operator = 'present' | '==' | '!=' | '~=';

interface Selector {
  fieldpath: string[];
  operator: Operator;
  value: string;
}

const EOF = -1;
const ILLEGAL = -2;

type TokenKind = 'eof' | 'quoted' | 'value' | 'field' | 'separator' | 'operator' | 'illegal' | 'other';

interface Token {
  pos: number;
  kind: TokenKind;
  text: string;
}

const isFieldRune = (c: number) => c === 0x5f || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39);
const isOperatorRune = (c: number) => c === 0x3d || c === 0x21 || c === 0x7e; // = ! ~
const isQuoteRune = (c: number) => c === 0x2f || c === 0x7c || c === 0x22; // / | "
const isSeparatorRune = (c: number) => c === 0x2c || c === 0x2e; // , .
const SPACE = /^\s$/u;
const isSpace = (c: number) => c >= 0 && SPACE.test(String.fromCodePoint(c));
const GRAPHIC = /^[\p{L}\p{M}\p{N}\p{P}\p{S}\p{Zs}]$/u;
const isValueRune = (c: number) => c >= 0 && c !== 0x2c && !isSpace(c) && GRAPHIC.test(String.fromCodePoint(c));

function digitVal(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return 16;
}

/** The tokenizer: positions are UTF-16 offsets into the input (byte offsets for ASCII, as in Go). */
class Scanner {
  pos = 0;
  ppos = 0;
  value = false;
  err = '';
  constructor(readonly input: string) {}

  next(): number {
    if (this.pos >= this.input.length) return EOF;
    this.pos = this.ppos;
    if (this.ppos >= this.input.length) return EOF;
    const c = this.input.codePointAt(this.ppos)!;
    this.ppos += c > 0xffff ? 2 : 1;
    if (c === 0) {
      this.error('unexpected null');
      return ILLEGAL;
    }
    return c;
  }

  peek(): number {
    const [pos, ppos] = [this.pos, this.ppos];
    const c = this.next();
    this.pos = pos;
    this.ppos = ppos;
    return c;
  }

  scan(): Token {
    let ch = this.next();
    let pos = this.pos;
    for (;;) {
      if (ch === EOF) return { pos: this.pos, kind: 'eof', text: '' };
      if (ch === ILLEGAL) return { pos: this.pos, kind: 'illegal', text: '' };
      if (isQuoteRune(ch)) {
        const ok = this.scanQuoted(ch);
        return { pos, kind: ok ? 'quoted' : 'illegal', text: this.input.slice(pos, this.ppos) };
      }
      if (isSeparatorRune(ch)) {
        this.value = false;
        return { pos, kind: 'separator', text: this.input.slice(pos, this.ppos) };
      }
      if (isOperatorRune(ch)) {
        while (isOperatorRune(this.peek())) this.next();
        this.value = true;
        return { pos, kind: 'operator', text: this.input.slice(pos, this.ppos) };
      }
      if (isSpace(ch)) {
        ch = this.next();
        pos = this.pos;
        continue;
      }
      if (this.value) {
        while (isValueRune(this.peek())) this.next();
        this.value = false;
        return { pos, kind: 'value', text: this.input.slice(pos, this.ppos) };
      }
      if (isFieldRune(ch)) {
        while (isFieldRune(this.peek())) this.next();
        return { pos, kind: 'field', text: this.input.slice(pos, this.ppos) };
      }
      return { pos: this.pos, kind: 'other', text: '' };
    }
  }

  private scanQuoted(quote: number): boolean {
    let illegal = false;
    let ch = this.next();
    while (ch !== quote) {
      if (ch === 0x0a || ch < 0) {
        this.error('quoted literal not terminated');
        return false;
      }
      if (ch === 0x5c) {
        const [c, legal] = this.scanEscape(quote);
        ch = c;
        if (!legal) illegal = true;
      } else {
        ch = this.next();
      }
    }
    return !illegal;
  }

  private scanEscape(quote: number): [number, boolean] {
    const ch = this.next();
    if ([0x61, 0x62, 0x66, 0x6e, 0x72, 0x74, 0x76, 0x5c, quote].includes(ch)) return [this.next(), true];
    if (ch >= 0x30 && ch <= 0x37) return this.scanDigits(ch, 8, 3);
    if (ch === 0x78) return this.scanDigits(this.next(), 16, 2);
    if (ch === 0x75) return this.scanDigits(this.next(), 16, 4);
    if (ch === 0x55) return this.scanDigits(this.next(), 16, 8);
    this.error('illegal escape sequence');
    return [ch, false];
  }

  private scanDigits(ch: number, base: number, n: number): [number, boolean] {
    while (n > 0 && digitVal(ch) < base) {
      ch = this.next();
      n--;
    }
    if (n > 0) {
      this.error('illegal numeric escape sequence');
      return [ch, false];
    }
    return [ch, true];
  }

  error(msg: string): void {
    if (!this.err) this.err = msg;
  }
}

class ParseError extends Error {}

/** Go's string unquoting, with `/` and `|` as double quotes (for regular expressions). */
function unquote(s: string): string {
  const n = s.length;
  if (n < 2) throw new ParseError('quote syntax error');
  const quote = s[0]!;
  if (quote !== s[n - 1]) throw new ParseError('quote syntax error');
  let body = s.slice(1, n - 1);
  if (quote === '`') {
    if (body.includes('`')) throw new ParseError('quote syntax error');
    return body.replaceAll('\r', '');
  }
  if (!['"', "'", '|', '/'].includes(quote) || body.includes('\n')) throw new ParseError('quote syntax error');
  if (!body.includes('\\') && !body.includes(quote) && quote !== "'") return body;
  const bytes: number[] = [];
  const pushCode = (c: number) => bytes.push(...Buffer.from(String.fromCodePoint(c), 'utf8'));
  while (body.length) {
    const c = body[0]!;
    if (c === quote) throw new ParseError('quote syntax error');
    if (c !== '\\') {
      const cp = body.codePointAt(0)!;
      pushCode(cp);
      body = body.slice(cp > 0xffff ? 2 : 1);
    } else {
      if (body.length <= 1) throw new ParseError('quote syntax error');
      const e = body[1]!;
      body = body.slice(2);
      const simple: Record<string, number> = { a: 7, b: 8, f: 12, n: 10, r: 13, t: 9, v: 11, '\\': 0x5c };
      if (e in simple) bytes.push(simple[e]!);
      else if (e === 'x' || e === 'u' || e === 'U') {
        const len = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const hex = body.slice(0, len);
        if (hex.length < len || !/^[0-9a-fA-F]+$/.test(hex)) throw new ParseError('quote syntax error');
        body = body.slice(len);
        const v = parseInt(hex, 16);
        if (e === 'x') bytes.push(v);
        else if (v > 0x10ffff) throw new ParseError('quote syntax error');
        else pushCode(v);
      } else if (e >= '0' && e <= '7') {
        const oct = e + body.slice(0, 2);
        if (oct.length < 3 || !/^[0-7]{3}$/.test(oct)) throw new ParseError('quote syntax error');
        body = body.slice(2);
        const v = parseInt(oct, 8);
        if (v > 255) throw new ParseError('quote syntax error');
        bytes.push(v);
      } else if (e === "'" || e === '"' || e === '|' || e === '/') {
        if (e !== quote) throw new ParseError('quote syntax error');
        bytes.push(e.charCodeAt(0));
      } else {
        throw new ParseError('quote syntax error');
      }
    }
    if (quote === "'" && body.length) throw new ParseError('quote syntax error');
  }
  return Buffer.from(bytes).toString('utf8');
}

class Parser {
  private readonly sc: Scanner;
  constructor(private readonly input: string) {
    this.sc = new Scanner(input);
  }

  parse(): Selector[] {
    const out = [this.selector()];
    for (;;) {
      const c = this.sc.peek();
      if (c === 0x2c) {
        const t = this.sc.scan();
        if (t.kind !== 'separator') throw this.error(t.pos, 'expected a separator');
        out.push(this.selector());
      } else if (c === EOF) {
        return out;
      } else {
        throw this.error(this.sc.ppos, `unexpected input: ${String.fromCodePoint(c < 0 ? 0xfffd : c)}`);
      }
    }
  }

  private selector(): Selector {
    const fieldpath = this.fieldpath();
    const c = this.sc.peek();
    if (c === 0x2c || c === EOF) return { fieldpath, operator: 'present', value: '' };
    const operator = this.operator();
    return { fieldpath, operator, value: this.value(operator === '~=') };
  }

  private fieldpath(): string[] {
    const fs = [this.field()];
    while (this.sc.peek() === 0x2e) {
      const t = this.sc.scan();
      if (t.kind !== 'separator') throw this.error(t.pos, 'expected a field separator (`.`)');
      fs.push(this.field());
    }
    return fs;
  }

  private field(): string {
    const t = this.sc.scan();
    if (t.kind === 'field') return t.text;
    if (t.kind === 'quoted') return this.unquote(t, false);
    if (t.kind === 'illegal') throw this.error(t.pos, this.sc.err);
    throw this.error(t.pos, 'expected field or quoted');
  }

  private operator(): Operator {
    const t = this.sc.scan();
    if (t.kind === 'operator') {
      if (t.text === '==' || t.text === '!=' || t.text === '~=') return t.text;
      throw this.error(t.pos, `unsupported operator "${t.text}"`);
    }
    if (t.kind === 'illegal') throw this.error(t.pos, this.sc.err);
    throw this.error(t.pos, 'expected an operator ("=="|"!="|"~=")');
  }

  private value(allowAltQuotes: boolean): string {
    const t = this.sc.scan();
    if (t.kind === 'value' || t.kind === 'field') return t.text;
    if (t.kind === 'quoted') return this.unquote(t, allowAltQuotes);
    if (t.kind === 'illegal') throw this.error(t.pos, this.sc.err);
    throw this.error(t.pos, 'expected value or quoted');
  }

  private unquote(t: Token, allowAlts: boolean): string {
    if (!allowAlts && t.text[0] !== "'" && t.text[0] !== '"') throw this.error(t.pos, 'invalid quote encountered');
    try {
      return unquote(t.text);
    } catch (err) {
      throw this.error(t.pos, `unquoting failed: ${(err as Error).message}`);
    }
  }

  private error(pos: number, msg: string): ParseError {
    const s = this.input;
    if (pos < s.length) return new ParseError(`parse error: [${s.slice(0, pos)} >|${s.slice(pos, pos + 1)}|< ${s.slice(pos + 1)}]: ${msg}`);
    return new ParseError(`parse error: [${s}]: ${msg}`);
  }
}

function compile(re: string): RegExp | null {
  for (const flags of ['u', '']) {
    try {
      return new RegExp(re, flags);
    } catch {
      // try without the unicode flag, then give up
    }
  }
  return null;
}

class SelectorsFilter implements Filter {
  private readonly res = new Map<Selector, RegExp | null>();
  constructor(private readonly selectors: Selector[]) {}
  match(adaptor: FilterAdaptor): boolean {
    return this.selectors.every((s) => {
      const v = adaptor(s.fieldpath);
      switch (s.operator) {
        case 'present':
          return v !== undefined;
        case '==':
          return v !== undefined && v === s.value;
        case '!=':
          return (v ?? '') !== s.value;
        case '~=': {
          if (!this.res.has(s)) this.res.set(s, compile(s.value));
          const re = this.res.get(s);
          return !!re && re.test(v ?? '');
        }
      }
    });
  }
}

const ALWAYS: Filter = { match: () => true };

/** Parses one filter string ("" matches everything). Throws a UsageError naming the position. */
export function parseFilter(input: string): Filter {
  if (input === '') return ALWAYS;
  try {
    return new SelectorsFilter(new Parser(input).parse());
  } catch (err) {
    if (err instanceof ParseError) throw new UsageError(`Cannot parse the filter: ${err.message}`, { filter: input, detail: err.message });
    throw err;
  }
}

/** Parses several filter strings into one that matches when any matches (none: everything). */
export function parseFilters(inputs: readonly string[]): Filter {
  if (inputs.length === 0) return ALWAYS;
  const fs = inputs.map(parseFilter);
  return { match: (a) => fs.some((f) => f.match(a)) };
}
