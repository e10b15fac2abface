// A stand-in for a job's REST API, for working on the web UI without a job:
//
//   node crates/cli/tests/web_ui/fake-api.cjs [port] [token]   # then open http://127.0.0.1:<port>/
//
// Serves the UI files straight from crates/rest/ui (edit, reload) and invented
// Flink-shaped answers (docs: /work/notes/rest-contract.md, Flink's REST API):
// a three-operator job whose counters grow, checkpoints every second with one
// failure, a restore source, two exceptions, savepoints that complete after a
// second (a target directory containing "elsewhere" is refused with 403), and
// with a token, 401 for API calls without it. Not used by the tests: the browser
// test runs against a real job. (ui-test.cjs runs against it too, for work on the
// script itself.)
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const UI = path.join(__dirname, '..', '..', '..', 'rest', 'ui');
const port = Number(process.argv[2] || 8099);
const token = process.argv[3] || '';
const JID = crypto.randomBytes(16).toString('hex');
const started = Date.now() - 95_000;
let state = 'RUNNING';
let endTime = -1;
const vid = (uid) => crypto.createHash('md5').update(uid).digest('hex');
const V = [
  { uid: 'source', name: 'Source: generator', in: 0, out: 1 },
  { uid: 'count', name: 'count per key', in: 1, out: 1 },
  { uid: 'sink', name: 'Sink: files', in: 1, out: 0 },
];
const savepoints = {};
const checkpoints = [];
let nextCp = 40;

function tick() {
  if (state !== 'RUNNING') return;
  const now = Date.now();
  const id = nextCp++;
  const failed = id % 17 === 0;
  // Now and then a checkpoint under backpressure: unaligned, with in-flight records.
  const unaligned = !failed && id % 5 === 0;
  // Counted in checkpointed_size too, as the job reports it.
  const persisted = unaligned ? 100000 + Math.round(Math.random() * 900000) : 0;
  checkpoints.unshift({
    className: failed ? '.FailedCheckpointStatistics' : '.CompletedCheckpointStatistics',
    id, status: failed ? 'FAILED' : 'COMPLETED', is_savepoint: false, savepointFormat: null,
    trigger_timestamp: now - 40, latest_ack_timestamp: now,
    checkpointed_size: 20000 + Math.round(Math.random() * 30000) + persisted, state_size: 900000 + id * 5000 + persisted,
    end_to_end_duration: 15 + Math.round(Math.random() * 60), alignment_buffered: 0, processed_data: 0,
    persisted_data: persisted,
    num_subtasks: 6, num_acknowledged_subtasks: failed ? 4 : 6, checkpoint_type: unaligned ? 'UNALIGNED_CHECKPOINT' : 'CHECKPOINT', tasks: {},
    external_path: failed ? null : `file:///tmp/flowstate/checkpoints/${JID}/chk-${id}`, discarded: false,
    ...(failed ? { failure_timestamp: now, failure_message: 'checkpoint 17 expired before completing' } : {}),
  });
  checkpoints.length = Math.min(checkpoints.length, 100);
}
for (let i = 0; i < 30; i++) tick();
setInterval(tick, 1000);

function metrics(v) {
  const secs = (Date.now() - started) / 1000;
  const n = Math.round(secs * 48000);
  return {
    'read-bytes': 0, 'read-bytes-complete': true, 'write-bytes': 0, 'write-bytes-complete': true,
    'read-records': v.in ? n : 0, 'read-records-complete': true,
    'write-records': v.out ? n : 0, 'write-records-complete': true,
    'accumulated-backpressured-time': Math.round(secs * 1000 * 2 * (v.uid === 'source' ? 0.3 : 0)),
    'accumulated-idle-time': Math.round(secs * 1000 * 2 * 0.2),
    'accumulated-busy-time': Math.round(secs * 1000 * 2 * (v.uid === 'count' ? 0.7 : 0.4)),
  };
}

function details() {
  const now = Date.now();
  const end = state === 'RUNNING' ? -1 : endTime;
  return {
    jid: JID, name: 'keyed-count', isStoppable: true, state, 'job-type': 'STREAMING',
    'start-time': started, 'end-time': end, duration: (end > 0 ? end : now) - started, maxParallelism: 128, now,
    timestamps: { RUNNING: started },
    vertices: V.map((v) => ({ id: vid(v.uid), name: v.name, maxParallelism: 128, parallelism: 2, status: state,
      'start-time': started, 'end-time': end, duration: now - started, tasks: { running: 2 }, metrics: metrics(v) })),
    'status-counts': { RUNNING: 3 },
    plan: { jid: JID, name: 'keyed-count', type: 'STREAMING', nodes: V.map((v, i) => ({
      id: vid(v.uid), parallelism: 2, operator: '', operator_strategy: '', description: v.name,
      inputs: i ? [{ num: 0, id: vid(V[i - 1].uid), ship_strategy: i === 1 ? 'HASH' : 'FORWARD', exchange: 'pipelined_bounded' }] : [],
      optimizer_properties: {} })) },
  };
}

function send(res, status, body, type) {
  res.writeHead(status, { 'Content-Type': type || 'application/json' });
  res.end(typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body));
}

function trigger(req, res, stop) {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    let target = '';
    try { const b = JSON.parse(body || '{}'); target = b['target-directory'] || b.targetDirectory || ''; } catch (e) { return send(res, 400, { errors: ['invalid request body'] }); }
    if (target.includes('elsewhere')) return send(res, 403, { errors: [`savepoint target ${target} is not under --savepoint-dir or a --savepoint-root`] });
    accept(res, stop, target);
  });
}

function accept(res, stop, target) {
  const rid = crypto.randomBytes(16).toString('hex');
  savepoints[rid] = { at: Date.now(), stop, target: target || '/tmp/savepoints' };
  send(res, 202, { 'request-id': rid });
}

http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname.replace(/^\/v1/, '');
  const files = { '/': 'index.html', '/assets/app.js': 'app.js', '/assets/app.css': 'app.css', '/assets/favicon.svg': 'favicon.svg' };
  const types = { html: 'text/html', js: 'text/javascript', css: 'text/css', svg: 'image/svg+xml' };
  if (files[p]) {
    const f = files[p];
    // The real server's policy (crates/rest/src/ui.rs), so that the page is tried under it.
    if (p === '/') res.setHeader('Content-Security-Policy', "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    return send(res, 200, fs.readFileSync(path.join(UI, f)), types[f.split('.').pop()]);
  }
  if (token && req.headers.authorization !== `Bearer ${token}`) return send(res, 401, { errors: ['this HTTP API needs a bearer token (Authorization: Bearer <token>)'] });
  const J = `/jobs/${JID}`;
  if (p === '/config') return send(res, 200, { 'refresh-interval': 3000, 'timezone-name': 'UTC', 'timezone-offset': 0, 'flink-version': '0.1.0', 'flink-revision': 'fake', features: {} });
  if (p === '/jobs/overview') return send(res, 200, { jobs: [{ jid: JID, name: 'keyed-count', state, 'start-time': started, 'end-time': endTime, duration: Date.now() - started, 'last-modification': started, tasks: { running: 6 } }] });
  if (p === J && req.method === 'GET') return send(res, 200, details());
  if (p === J && req.method === 'PATCH') { state = 'CANCELED'; endTime = Date.now(); return send(res, 202, {}); }
  const bp = p.match(/^\/jobs\/[0-9a-f]+\/vertices\/([0-9a-f]+)\/backpressure$/);
  if (bp) {
    const high = bp[1] === vid('source');
    return send(res, 200, { status: 'ok', 'backpressure-level': high ? 'low' : 'ok', 'end-timestamp': Date.now(), subtasks: [0, 1].map((i) => ({ subtask: i, 'attempt-number': 0, 'backpressure-level': high ? 'low' : 'ok', ratio: high ? 0.3 : 0.0, idleRatio: 0.2, busyRatio: 0.5 })) });
  }
  if (p === `${J}/checkpoints`) {
    const done = checkpoints.find((c) => c.status === 'COMPLETED');
    const failed = checkpoints.find((c) => c.status === 'FAILED');
    return send(res, 200, { counts: { restored: 1, total: nextCp - 1, in_progress: 0, completed: nextCp - 5, failed: 4 }, summary: {},
      latest: { completed: done, savepoint: checkpoints.find((c) => c.is_savepoint) || null, failed: failed || null,
        restored: { id: 39, restore_timestamp: started, is_savepoint: true, external_path: 'file:///var/lib/flowstate/savepoints/savepoint-39-1a2b3c' } },
      history: checkpoints });
  }
  if (p === `${J}/checkpoints/config`) return send(res, 200, { mode: 'exactly_once', interval: 1000, timeout: 600000, min_pause: 0, max_concurrent: 1, externalization: { enabled: true, delete_on_cancellation: false }, state_backend: 'heap', checkpoint_storage: 'file:///tmp/flowstate/checkpoints', unaligned_checkpoints: true, aligned_checkpoint_timeout: 0, tolerable_failed_checkpoints: 3 });
  if (p === `${J}/exceptions`) return send(res, 200, { exceptionHistory: { entries: [
    { exceptionName: 'flowstate::TaskFailure', stacktrace: 'task count (1/2) failed: injected fault\n  at step 8812', timestamp: started + 40_000, taskName: 'count (1/2)', location: 'local', endpoint: null, taskManagerId: 'local', failureLabels: {}, concurrentExceptions: [] },
  ], truncated: false } });
  if (p === `${J}/savepoints` && req.method === 'POST') return trigger(req, res, false);
  if (p === `${J}/stop` && req.method === 'POST') return trigger(req, res, true);
  const sp = p.match(/^\/jobs\/[0-9a-f]+\/savepoints\/([0-9a-f]+)$/);
  if (sp && savepoints[sp[1]]) {
    const s = savepoints[sp[1]];
    if (Date.now() - s.at < 1000) return send(res, 200, { status: { id: 'IN_PROGRESS' } });
    if (s.stop && state === 'RUNNING') { state = 'FINISHED'; endTime = Date.now(); }
    const location = `file://${s.target}/savepoint-${sp[1].slice(0, 6)}`;
    if (!s.listed) {
      s.listed = true;
      const id = nextCp++;
      checkpoints.unshift({ className: '.CompletedCheckpointStatistics', id, status: 'COMPLETED', is_savepoint: true, savepointFormat: 'CANONICAL',
        trigger_timestamp: s.at, latest_ack_timestamp: s.at + 900, checkpointed_size: 1200000, state_size: 1200000, end_to_end_duration: 900,
        alignment_buffered: 0, processed_data: 0, persisted_data: 0, num_subtasks: 6, num_acknowledged_subtasks: 6, checkpoint_type: 'SAVEPOINT',
        tasks: {}, external_path: location, discarded: false });
    }
    return send(res, 200, { status: { id: 'COMPLETED' }, operation: { location } });
  }
  send(res, 404, { errors: [`no route for ${req.method} ${p}`] });
}).listen(port, '127.0.0.1', () => console.log(`fake flowstate API on http://127.0.0.1:${port}/`));
