// Test helper: makes a child started by child_process.fork look like an Electron utility process
// to the engine worker: `process.parentPort` (messages arrive as `{ data }` events, `postMessage`
// answers) and no `process.send`, so only the worker's utility-process branch can work.
// Loaded with `node --require` (which also runs in tsx's loader thread: nothing to do there).
const { EventEmitter } = require('node:events');
const { isMainThread } = require('node:worker_threads');

if (isMainThread) {
  const send = process.send.bind(process);
  process.send = undefined;
  const port = new EventEmitter();
  port.postMessage = (message) => send(message);
  process.on('message', (message) => port.emit('message', { data: message }));
  process.parentPort = port;
  // A utility process ends with its parent.
  process.on('disconnect', () => process.exit(0));
}
