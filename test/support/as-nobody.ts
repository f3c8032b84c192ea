/**
 * Runs a snippet of the compiled library as an unprivileged user (uid/gid 65534) in a child
 * process, for the tests of what applying a layer does without root. The snippet is the body of
 * an async function with `lib` (the images modules) and `args` in scope; what it returns comes
 * back as JSON, and a thrown error as `{ error: { name, code, message } }`.
 */
import { execFile } from 'node:child_process';

export const NOBODY = 65534;

const LIB = new URL('../../src/images/', import.meta.url).href;

/** The result of {@link runAsNobody}: the snippet's value or its error. */
export type NobodyResult<T> = { value: T } | { error: { name: string; code?: string; message: string } };

/** Runs `body` as uid/gid 65534; `args` is passed through JSON. */
export function runAsNobody<T>(body: string, args: unknown): Promise<NobodyResult<T>> {
  const script = `
    const lib = {
      ...(await import(${JSON.stringify(LIB + 'layer-apply.js')})),
    };
    const args = JSON.parse(process.argv[1]);
    try {
      const value = await (async () => { ${body} })();
      process.stdout.write(JSON.stringify({ value }));
    } catch (e) {
      process.stdout.write(JSON.stringify({ error: { name: e.name, code: e.code, message: e.message } }));
    }`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(args)], { uid: NOBODY, gid: NOBODY, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && !stdout) return reject(new Error(`child failed: ${stderr || err.message}`));
      try {
        resolve(JSON.parse(stdout) as NobodyResult<T>);
      } catch {
        reject(new Error(`child printed no JSON: ${stdout} ${stderr}`));
      }
    });
  });
}
