/**
 * Text sinks: where streamed text output (XML dumps, deltas) goes, with back-pressure. A sink
 * may return a promise; the writer waits for it before producing more.
 */
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import type { Writable } from 'node:stream';

/** A sink for text; may return a promise to apply back-pressure. */
export type TextSink = (chunk: string) => void | Promise<void>;

/** A text sink over a writable stream that waits when the stream's buffer is full. */
export function streamSink(stream: Writable): TextSink {
  return (chunk) => {
    if (!stream.write(chunk)) return once(stream, 'drain').then(() => undefined);
    return undefined;
  };
}

/** Runs `fn` with a sink writing into `file` (created or truncated), then closes it. */
export async function withFileSink(file: string, fn: (sink: TextSink) => Promise<void>): Promise<void> {
  const ws = createWriteStream(file);
  const failed = new Promise<never>((_, reject) => ws.once('error', reject));
  try {
    await Promise.race([fn(streamSink(ws)), failed]);
  } finally {
    await Promise.race([new Promise<void>((resolve) => ws.end(() => resolve())), failed.catch(() => undefined)]);
  }
}
