/**
 * The worker process of `fs-worker-client.ts`: takes one {@link FsTask} over the IPC channel,
 * runs it, replies with its result or its error (as JSON, class and code kept) and exits. It
 * exits at once when its parent goes away (the channel closes), so a killed daemon leaves no
 * worker writing into a mount.
 */
import { errorToJson } from '../errors.js';
import { type FsTask, runFsTask } from './fs-tasks.js';

const controller = new AbortController();
process.on('disconnect', () => {
  controller.abort();
  process.exit(1);
});
process.once('message', (task: FsTask) => {
  runFsTask(task, controller.signal).then(
    (result) => process.send!({ ok: true, result }, () => process.exit(0)),
    (err: unknown) => process.send!({ ok: false, error: errorToJson(err) }, () => process.exit(0)),
  );
});
