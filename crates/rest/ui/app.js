// flowstate web UI. Plain JavaScript, no framework, no build step: this file is
// embedded in the binary as it is (crates/rest/src/ui.rs).
//
// It reads only the job's Flink-compatible REST API (same origin): /config,
// /jobs/overview, /jobs/{jid}, /jobs/{jid}/vertices/{vid}/backpressure,
// /jobs/{jid}/checkpoints, /jobs/{jid}/checkpoints/config, /jobs/{jid}/exceptions,
// and POSTs savepoints / stop and PATCHes cancel. Rates are computed here from
// successive polls of the vertices' record counters. Everything from the API is
// put into the page as text (textContent / createElement), never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'flowstate.apiToken';
  const REQUEST_TIMEOUT_MS = 15000;
  const SAVEPOINT_POLL_MS = 400;
  const CHART_ENTRIES = 60;
  const TABLE_ROWS = 50;
  const TERMINAL = new Set(['FINISHED', 'FAILED', 'CANCELED', 'CANCELLED', 'SUSPENDED']);

  const $ = (id) => document.getElementById(id);

  const state = {
    config: null,
    interval: 3000,
    jid: null,
    job: null,            // last /jobs/{jid}
    ended: false,
    samples: null,        // {t, byVertex: {vid: metrics}} of the previous poll
    rates: {},            // vid -> {inRate, outRate, busy, bp}
    backpressure: {},     // vid -> {level, ratio}
    checkpointConfigFor: null,
    lastOk: 0,
    failures: 0,
    actionBusy: false,
    unreachable: false,   // the API stopped answering (the process may have exited)
    endRequested: null,   // 'cancel' or 'stop' once the page asked for it
    timer: null,
  };

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') el.textContent = String(v);
      else if (k === 'class') el.setAttribute('class', v);
      else el.setAttribute(k, String(v));
    }
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function replace(el, ...children) {
    el.replaceChildren();
    append(el, children);
  }

  function showError(id, error) {
    const el = $(id);
    if (!error) { el.hidden = true; el.textContent = ''; return; }
    el.hidden = false;
    el.textContent = describe(error);
  }

  // ---------------------------------------------------------------- formatting

  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

  function fmtCount(v) {
    v = num(v);
    if (v === null) return '—';
    if (Math.abs(v) < 10000) return String(Math.round(v));
    const units = [['G', 1e9], ['M', 1e6], ['k', 1e3]];
    for (const [u, f] of units) if (Math.abs(v) >= f) return (v / f).toFixed(v / f >= 100 ? 0 : 1) + u;
    return String(Math.round(v));
  }

  function fmtRate(v) {
    v = num(v);
    if (v === null) return '—';
    if (v < 10) return v.toFixed(1);
    return fmtCount(v);
  }

  function fmtBytes(v) {
    v = num(v);
    if (v === null || v < 0) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : 1)) + ' ' + units[i];
  }

  function fmtDuration(ms) {
    ms = num(ms);
    if (ms === null || ms < 0) return '—';
    if (ms < 1000) return Math.round(ms) + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    const m = Math.floor(s / 60), r = Math.floor(s % 60);
    if (m < 60) return `${m}m ${String(r).padStart(2, '0')}s`;
    const hrs = Math.floor(m / 60);
    return `${hrs}h ${String(m % 60).padStart(2, '0')}m`;
  }

  function fmtTime(ts) {
    ts = num(ts);
    if (ts === null || ts <= 0) return '—';
    const d = new Date(ts);
    const today = new Date();
    const time = d.toLocaleTimeString([], { hour12: false });
    return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
  }

  function fmtPercent(ratio) {
    ratio = num(ratio);
    if (ratio === null) return '—';
    return Math.round(Math.min(1, Math.max(0, ratio)) * 100) + '%';
  }

  function tone(status) {
    switch (String(status || '').toUpperCase()) {
      case 'RUNNING': case 'COMPLETED': return 'ok';
      case 'FAILED': case 'FAILING': return 'bad';
      case 'FINISHED': return 'info';
      case 'CANCELED': case 'CANCELLED': return '';
      default: return 'warn';
    }
  }

  function pill(status, extraTone) {
    return h('span', { class: 'pill', 'data-tone': extraTone || tone(status), text: status || '—' });
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function describe(error) {
    if (error instanceof ApiError) {
      if (error.status === 0) return error.message;
      return `HTTP ${error.status}: ${error.message}`;
    }
    return String(error && error.message ? error.message : error);
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body || {});
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    init.signal = abort.signal;
    let response, text;
    try {
      response = await fetch(path, init);
      text = await response.text();
    } catch (e) {
      throw new ApiError(0, abort.signal.aborted
        ? `no answer from the job's API within ${REQUEST_TIMEOUT_MS / 1000} s`
        : 'the job\'s API cannot be reached (has the process exited?)');
    } finally {
      clearTimeout(timer);
    }
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    if (!response.ok) {
      let message = response.statusText || 'request failed';
      if (json && Array.isArray(json.errors) && json.errors.length) message = json.errors.join('; ');
      else if (json && typeof json.error === 'string') message = json.error;
      else if (text) message = text.slice(0, 300);
      throw new ApiError(response.status, message);
    }
    if (json === null && text) throw new ApiError(response.status, `not JSON: ${text.slice(0, 100)}`);
    return json;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- token

  function showTokenForm(note) {
    $('token-form').hidden = false;
    if (note) $('token-note').textContent = note;
    $('token-input').focus();
  }

  function setupToken() {
    $('token-button').addEventListener('click', () => {
      const form = $('token-form');
      form.hidden = !form.hidden;
      if (!form.hidden) $('token-input').focus();
    });
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const value = $('token-input').value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $('token-input').value = '';
      $('token-form').hidden = true;
      refreshTokenButton();
      pollNow();
    });
    $('token-clear').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $('token-input').value = '';
      refreshTokenButton();
    });
    refreshTokenButton();
  }

  function refreshTokenButton() {
    $('token-button').textContent = sessionStorage.getItem(TOKEN_KEY) ? 'API token ✓' : 'API token';
  }

  // ---------------------------------------------------------------- polling

  function pollNow() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, 0);
  }

  function setConnection(ok, text) {
    $('conn-dot').dataset.state = ok ? 'ok' : 'error';
    $('conn-text').textContent = text;
  }

  async function poll() {
    clearTimeout(state.timer);
    try {
      await refresh();
      state.failures = 0;
      state.lastOk = Date.now();

      setConnection(true, `updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (error) {
      state.failures++;
      if (error instanceof ApiError && error.status === 401) {
        setConnection(false, 'token needed');
        showTokenForm(sessionStorage.getItem(TOKEN_KEY)
          ? 'The API refused the token. Enter the job\'s --rest-token.'
          : 'This job\'s API needs a bearer token (the job\'s --rest-token).');
      } else {
        const since = state.lastOk ? ` — showing data from ${fmtTime(state.lastOk)}` : '';
        setConnection(false, describe(error) + since);
        if (error instanceof ApiError && error.status === 0 && state.job) markUnreachable();
      }
    }
    // Back off while the API fails (up to 30 s); an ended job changes no more, but
    // its exceptions and final checkpoint may still arrive, so keep a slow poll.
    const base = state.ended ? Math.max(state.interval, 5000) : state.interval;
    const delay = Math.min(30000, base * Math.pow(2, Math.min(state.failures, 4)));
    state.timer = setTimeout(poll, delay);
  }

  async function refresh() {
    if (!state.config) {
      try {
        state.config = await api('GET', '/config');
        const interval = num(state.config['refresh-interval']);
        if (interval) state.interval = Math.min(10000, Math.max(1000, interval));
        renderConfig();
      } catch (error) {
        if (error instanceof ApiError && (error.status === 401 || error.status === 0)) throw error;
        showError('config-error', error);
      }
    }
    const overview = await api('GET', '/jobs/overview');
    if (state.unreachable) {
      // It answers again: what follows re-renders from fresh data.
      state.unreachable = false;
      banner(null);
    }
    const jobs = (overview && Array.isArray(overview.jobs)) ? overview.jobs : [];
    pickJob(jobs);
    if (!state.jid) {
      renderNoJob();
      return;
    }
    const jid = enc(state.jid);
    const [details, checkpoints, exceptions] = await Promise.allSettled([
      api('GET', `/jobs/${jid}`),
      api('GET', `/jobs/${jid}/checkpoints`),
      api('GET', `/jobs/${jid}/exceptions`),
    ]);
    // A refused token or an API that is gone fails every call: report it once.
    for (const r of [details, checkpoints, exceptions]) {
      if (r.status === 'rejected' && r.reason instanceof ApiError && (r.reason.status === 401 || r.reason.status === 0)) throw r.reason;
    }
    if (details.status === 'fulfilled') {
      await renderJob(details.value);
      showError('graph-error', null);
    } else {
      showError('graph-error', details.reason);
    }
    if (checkpoints.status === 'fulfilled') {
      renderCheckpoints(checkpoints.value);
      showError('checkpoints-error', null);
    } else {
      showError('checkpoints-error', checkpoints.reason);
    }
    if (exceptions.status === 'fulfilled') {
      renderExceptions(exceptions.value);
      showError('exceptions-error', null);
    } else {
      showError('exceptions-error', exceptions.reason);
    }
    if (state.checkpointConfigFor !== state.jid) {
      try {
        const config = await api('GET', `/jobs/${jid}/checkpoints/config`);
        state.checkpointConfigFor = state.jid;
        state.checkpointConfig = config;
        renderConfig();
        showError('config-error', null);
      } catch (error) {
        showError('config-error', error);
      }
    }
  }

  function pickJob(jobs) {
    const select = $('job-select');
    const wanted = new URLSearchParams(location.hash.slice(1)).get('job');
    const known = (jid) => jobs.some((j) => j.jid === jid);
    let jid = state.jid;
    if (wanted && known(wanted)) jid = wanted;
    if (!jid || !known(jid)) {
      const sorted = jobs.slice().sort((a, b) => (num(b['start-time']) || 0) - (num(a['start-time']) || 0));
      const live = sorted.find((j) => !TERMINAL.has(String(j.state)));
      jid = (live || sorted[0] || {}).jid || null;
    }
    if (jid !== state.jid) {
      state.jid = jid;
      state.samples = null;
      state.rates = {};
      state.backpressure = {};
      state.ended = false;
      state.checkpointConfigFor = null;
    }
    select.hidden = jobs.length < 2;
    if (!select.hidden) {
      replace(select, jobs.map((j) => h('option', { value: j.jid, selected: j.jid === jid ? 'selected' : null, text: `${j.name} (${j.state})` })));
    }
  }

  /** The API went away: keep the last data, say it is stale, allow no actions. */
  function markUnreachable() {
    const first = !state.unreachable;
    state.unreachable = true;
    const status = String(state.job.state || '');
    let text;
    if (state.ended) text = `The job ended (${status}) and its process no longer answers; this is its last known state.`;
    else if (state.endRequested) text = `The job's process no longer answers after the ${state.endRequested} request (it has most likely exited); this is its last known state.`;
    else text = 'The job\'s API does not answer (has the process exited?); this is its last known state. Retrying…';
    banner(text, state.ended || state.endRequested ? '' : 'warn');
    const pillEl = $('job-state');
    pillEl.textContent = `${status} · last known`;
    pillEl.dataset.tone = '';
    updateActionButtons();
    if (first) {
      // Rates of a process that is gone are not rates.
      state.samples = null;
      state.rates = {};
      state.backpressure = {};
      const vertices = Array.isArray(state.job.vertices) ? state.job.vertices : [];
      renderGraph(state.job, vertices);
      renderVertexTable(vertices);
    }
  }

  function renderNoJob() {
    $('job-name').textContent = 'No job';
    replace($('graph'), h('p', { class: 'muted', text: 'This process serves no job.' }));
  }

  function banner(text, toneName) {
    const el = $('banner');
    if (!text) { el.hidden = true; return; }
    el.hidden = false;
    el.dataset.tone = toneName || '';
    el.textContent = text;
  }

  // ---------------------------------------------------------------- job and graph

  const METRIC_KEYS = ['read-records', 'write-records', 'accumulated-backpressured-time', 'accumulated-busy-time', 'accumulated-idle-time'];

  async function renderJob(job) {
    state.job = job;
    const status = String(job.state || '');
    state.ended = TERMINAL.has(status);
    document.title = `${job.name || 'job'} · ${status} · flowstate`;
    $('job-name').textContent = job.name || '(unnamed job)';
    $('job-name').title = job.name || '';
    const pillEl = $('job-state');
    pillEl.textContent = status || '—';
    pillEl.dataset.state = status;
    pillEl.dataset.tone = tone(status);
    $('job-id').textContent = job.jid || '';
    const started = num(job['start-time']);
    const endTime = num(job['end-time']);
    $('job-times').textContent = state.ended && endTime > 0
      ? `started ${fmtTime(started)} · ended ${fmtTime(endTime)} · ran ${fmtDuration(num(job.duration))}`
      : `started ${fmtTime(started)} · up ${fmtDuration(num(job.duration))}`;
    if (state.ended) {
      banner(`This job has ended: ${status}${endTime > 0 ? ' at ' + fmtTime(endTime) : ''}. Its final state is shown; actions are disabled.`, status === 'FAILED' ? 'bad' : '');
    } else if (status !== 'RUNNING') {
      banner(`The job is ${status}.`, 'warn');
    } else {
      banner(null);
    }
    updateActionButtons();

    const vertices = Array.isArray(job.vertices) ? job.vertices : [];
    if (state.ended) {
      // Nothing flows any more: no rates, no backpressure (totals stay in the table).
      state.samples = null;
      state.rates = {};
      state.backpressure = {};
    } else {
      computeRates(job, vertices);
      await fetchBackpressure(vertices);
    }
    renderGraph(job, vertices);
    renderVertexTable(vertices);
  }

  function computeRates(job, vertices) {
    const t = num(job.now) || Date.now();
    const byVertex = {};
    for (const v of vertices) byVertex[v.id] = v.metrics || {};
    const prev = state.samples;
    state.samples = { t, byVertex };
    if (!prev || t <= prev.t) return;
    const dt = (t - prev.t) / 1000;
    const rates = {};
    for (const v of vertices) {
      const a = prev.byVertex[v.id];
      const b = byVertex[v.id];
      if (!a || !b) continue;
      const d = {};
      for (const k of METRIC_KEYS) {
        const x = num(a[k]), y = num(b[k]);
        // A counter that went down was reset (e.g. a restart): no rate this round.
        d[k] = x !== null && y !== null && y >= x ? y - x : null;
      }
      const perSecond = (k) => (d[k] === null ? null : d[k] / dt);
      // accumulated-*-time is in ms summed over subtasks: ms per second per subtask.
      const share = (k) => (d[k] === null ? null : d[k] / (dt * 1000 * Math.max(1, num(v.parallelism) || 1)));
      rates[v.id] = {
        inRate: perSecond('read-records'),
        outRate: perSecond('write-records'),
        busy: share('accumulated-busy-time'),
        bp: share('accumulated-backpressured-time'),
      };
    }
    state.rates = rates;
  }

  async function fetchBackpressure(vertices) {
    const jid = enc(state.jid);
    const answers = await Promise.allSettled(vertices.map((v) => api('GET', `/jobs/${jid}/vertices/${enc(v.id)}/backpressure`)));
    const bp = {};
    answers.forEach((a, i) => {
      if (a.status !== 'fulfilled' || !a.value || a.value.status !== 'ok') return;
      const subtasks = Array.isArray(a.value.subtasks) ? a.value.subtasks : [];
      const ratio = subtasks.reduce((m, st) => Math.max(m, num(st.ratio) || 0), 0);
      bp[vertices[i].id] = { level: a.value['backpressure-level'] || a.value.backpressureLevel, ratio };
    });
    state.backpressure = bp;
  }

  /** The level and ratio of a vertex's backpressure: the API's if it answered, else from the counters. */
  function pressure(vid) {
    const fromApi = state.backpressure[vid];
    if (fromApi && fromApi.level) return fromApi;
    const r = state.rates[vid];
    if (!r || r.bp === null || r.bp === undefined) return { level: null, ratio: null };
    const ratio = r.bp;
    return { level: ratio > 0.5 ? 'high' : ratio > 0.1 ? 'low' : 'ok', ratio };
  }

  function layout(vertices, nodes) {
    // Columns by longest path from a source; rows in order of appearance.
    const inputs = {};
    for (const n of nodes) inputs[n.id] = (Array.isArray(n.inputs) ? n.inputs : []).map((i) => i.id);
    const depth = {};
    const visiting = new Set();
    const depthOf = (id) => {
      if (depth[id] !== undefined) return depth[id];
      if (visiting.has(id)) return 0; // a cycle would be a bug upstream; do not loop
      visiting.add(id);
      const ins = (inputs[id] || []).filter((x) => x in inputs || vertices.some((v) => v.id === x));
      const d = ins.length ? 1 + Math.max(...ins.map(depthOf)) : 0;
      visiting.delete(id);
      depth[id] = d;
      return d;
    };
    const columns = [];
    for (const v of vertices) {
      const d = depthOf(v.id);
      (columns[d] = columns[d] || []).push(v);
    }
    return { columns: columns.filter(Boolean), inputs };
  }

  function truncate(text, max) {
    text = String(text || '');
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function renderGraph(job, vertices) {
    const container = $('graph');
    if (!vertices.length) {
      replace(container, h('p', { class: 'muted', text: 'The job reports no operators.' }));
      return;
    }
    const nodes = (job.plan && Array.isArray(job.plan.nodes)) ? job.plan.nodes : [];
    const { columns, inputs } = layout(vertices, nodes);
    const W = 232, H = 92, GX = 86, GY = 22, PAD = 10;
    const rows = Math.max(...columns.map((c) => c.length));
    const width = PAD * 2 + columns.length * W + (columns.length - 1) * GX;
    const height = PAD * 2 + rows * H + (rows - 1) * GY;
    const pos = {};
    columns.forEach((col, ci) => {
      const offset = (height - (col.length * H + (col.length - 1) * GY)) / 2;
      col.forEach((v, ri) => { pos[v.id] = { x: PAD + ci * (W + GX), y: offset + ri * (H + GY) }; });
    });
    const svg = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'job graph' });
    const shipOf = {};
    for (const n of nodes) for (const i of (Array.isArray(n.inputs) ? n.inputs : [])) shipOf[`${i.id}>${n.id}`] = i.ship_strategy;
    svg.append(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#8a96a5' }))));
    for (const v of vertices) {
      for (const from of inputs[v.id] || []) {
        const a = pos[from], b = pos[v.id];
        if (!a || !b) continue;
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2;
        const mx = (x1 + x2) / 2;
        svg.append(s('path', { class: 'edge', d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, 'marker-end': 'url(#arrow)' }));
        const label = shipOf[`${from}>${v.id}`];
        if (label) svg.append(s('text', { class: 'edge-label', x: mx, y: (y1 + y2) / 2 - 6, 'text-anchor': 'middle', text: label }));
      }
    }
    for (const v of vertices) {
      const p = pos[v.id];
      const r = state.rates[v.id] || {};
      const bp = pressure(v.id);
      const level = bp.level || 'none';
      const g = s('g', { class: 'node', 'data-vertex': v.id, 'data-level': level, transform: `translate(${p.x},${p.y})` });
      g.append(s('title', { text: `${v.name}\n${v.id}` }));
      g.append(s('rect', { class: 'box', width: W, height: H, rx: 7 }));
      g.append(s('text', { class: 'name', x: 12, y: 21, text: truncate(v.name, 30) }));
      g.append(s('text', { class: 'meta', x: 12, y: 38, text: `parallelism ${v.parallelism ?? '—'} · ${v.status || ''}` }));
      const rates = s('text', { class: 'rates', x: 12, y: 57 });
      const isSource = !(inputs[v.id] || []).length && !num((v.metrics || {})['read-records']);
      rates.append(s('tspan', { class: 'rate-in', text: isSource ? 'source' : `in ${fmtRate(r.inRate)}/s` }), s('tspan', { dx: 10, class: 'rate-out', text: `out ${fmtRate(r.outRate)}/s` }));
      g.append(rates);
      // Backpressure bar: the share of time the operator waited on its output.
      const ratio = bp.ratio === null || bp.ratio === undefined ? 0 : Math.min(1, Math.max(0, bp.ratio));
      g.append(s('rect', { class: 'bp-track', x: 12, y: 68, width: W - 24, height: 6, rx: 3 }));
      g.append(s('rect', { class: `bp-${level}`, x: 12, y: 68, width: Math.max(level === 'none' ? 0 : 3, (W - 24) * ratio), height: 6, rx: 3 }));
      g.append(s('text', { class: 'meta', x: 12, y: 87, text: `backpressure ${bp.level || '—'}${bp.ratio !== null && bp.ratio !== undefined ? ' ' + fmtPercent(bp.ratio) : ''} · busy ${fmtPercent(r.busy)}` }));
      svg.append(g);
    }
    replace(container, svg);
  }

  function renderVertexTable(vertices) {
    const body = $('vertex-table').tBodies[0];
    replace(body, vertices.map((v) => {
      const m = v.metrics || {};
      const r = state.rates[v.id] || {};
      const bp = pressure(v.id);
      return h('tr', { 'data-vertex': v.id },
        h('td', { title: v.id, text: v.name }),
        h('td', { class: 'num', text: v.parallelism ?? '—' }),
        h('td', {}, pill(v.status)),
        h('td', { class: 'num', text: fmtCount(m['read-records']) }),
        h('td', { class: 'num', text: fmtRate(r.inRate) }),
        h('td', { class: 'num', text: fmtCount(m['write-records']) }),
        h('td', { class: 'num', text: fmtRate(r.outRate) }),
        h('td', { class: 'num', text: fmtPercent(r.busy) }),
        h('td', { class: `num bp-${bp.level || 'none'}`, text: bp.level ? `${bp.level} ${fmtPercent(bp.ratio)}` : '—' }));
    }));
  }

  // ---------------------------------------------------------------- checkpoints

  function stat(label, value, sub, extra) {
    return h('div', { class: 'stat' + (extra && extra.wide ? ' wide' : '') },
      h('div', { class: 'label', text: label }),
      h('div', { class: 'value' + (extra && extra.path ? ' path' : ''), text: value, 'data-field': extra && extra.field }),
      sub ? h('div', { class: 'sub', text: sub }) : null);
  }

  function renderCheckpoints(cp) {
    const counts = cp.counts || {};
    $('cp-counts').textContent = `${counts.total ?? 0} triggered · ${counts.completed ?? 0} completed · ${counts.failed ?? 0} failed · ${counts.in_progress ?? 0} in progress`;
    const latest = cp.latest || {};
    const done = latest.completed;
    const sp = latest.savepoint;
    const failed = latest.failed;
    const restored = latest.restored;
    replace($('cp-summary'),
      stat('Latest completed', done ? `#${done.id}` : '—', done ? `${fmtTime(done.latest_ack_timestamp)} · ${fmtDuration(done.end_to_end_duration)} · ${fmtBytes(done.state_size)}` : 'none yet'),
      stat('Latest savepoint', sp ? `#${sp.id}` : '—', sp ? `${fmtTime(sp.latest_ack_timestamp)} · ${sp.external_path || ''}` : 'none in this run'),
      stat('Latest failure', failed ? `#${failed.id}` : '—', failed ? `${fmtTime(failed.failure_timestamp)} · ${failed.failure_message || ''}` : 'none'),
      stat('Restored from', restored ? (restored.external_path || `#${restored.id}`) : 'nothing (fresh start)',
        restored ? `${restored.is_savepoint ? 'savepoint' : 'checkpoint'} #${restored.id} · at ${fmtTime(restored.restore_timestamp)}` : `${counts.restored ?? 0} restores`,
        { wide: true, path: !!restored, field: 'restored' }));
    const history = Array.isArray(cp.history) ? cp.history : [];
    renderCheckpointCharts(history.slice(0, CHART_ENTRIES).reverse());
    const body = $('checkpoint-table').tBodies[0];
    if (!history.length) {
      replace(body, h('tr', {}, h('td', { colspan: 10, class: 'muted', text: 'No checkpoints yet.' })));
      return;
    }
    replace(body, history.slice(0, TABLE_ROWS).map((c) => {
      const savepoint = c.is_savepoint || c.checkpoint_type === 'SAVEPOINT';
      const unaligned = c.checkpoint_type === 'UNALIGNED_CHECKPOINT';
      const failedEntry = c.status === 'FAILED';
      // Savepoints are always aligned; a checkpoint is unaligned once it
      // completed with some task's barrier overtaking in-flight records.
      const type = savepoint ? pill('SAVEPOINT', 'sp')
        : unaligned ? pill('unaligned', 'info')
        : h('span', { class: 'muted', text: 'aligned' });
      return h('tr', { 'data-status': c.status, 'data-id': c.id, 'data-type': c.checkpoint_type || '' },
        h('td', { class: 'num', text: c.id }),
        h('td', {}, pill(c.status)),
        h('td', {}, type),
        h('td', { text: fmtTime(c.trigger_timestamp) }),
        h('td', { class: 'num', text: c.status === 'IN_PROGRESS' ? '…' : fmtDuration(c.end_to_end_duration) }),
        h('td', { class: 'num', text: c.status === 'IN_PROGRESS' ? '…' : fmtBytes(c.checkpointed_size) }),
        h('td', { class: 'num', text: c.status === 'IN_PROGRESS' ? '…' : fmtBytes(c.state_size) }),
        h('td', { class: 'num', 'data-field': 'persisted', text: c.status === 'COMPLETED' && unaligned ? fmtBytes(c.persisted_data) : '—' }),
        h('td', { class: 'num', text: `${c.num_acknowledged_subtasks ?? '—'}/${c.num_subtasks ?? '—'}` }),
        failedEntry
          ? h('td', { class: 'failure', text: c.failure_message || 'failed' })
          : h('td', { class: 'path', text: c.external_path || '' }));
    }));
  }

  /**
   * Bars over time (oldest left), on the left axis; optionally a line on an axis
   * of its own (right). `bar` and `line` give each entry's value (null: none).
   */
  function barChart(container, entries, bar, line, format) {
    if (!entries.length) {
      replace(container, h('p', { class: 'muted empty', text: 'No checkpoints yet.' }));
      return;
    }
    const Wc = Math.max(320, Math.round(container.clientWidth || 600)), Hc = 150;
    const L = 62, R = line ? 62 : 10, T = 10, B = 18;
    const scale = (values) => {
      const max = Math.max(1, ...values.filter((v) => v !== null));
      return { max, y: (v) => T + (Hc - T - B) * (1 - v / max) };
    };
    const left = scale(entries.map(bar.value));
    const right = line ? scale(entries.map(line.value)) : null;
    const slot = (Wc - L - R) / Math.max(entries.length, 20);
    const svg = s('svg', { viewBox: `0 0 ${Wc} ${Hc}`, width: Wc, height: Hc, role: 'img' });
    for (const f of [0, 0.5, 1]) {
      const y = left.y(left.max * f);
      svg.append(s('line', { class: 'axis', x1: L, x2: Wc - R, y1: y, y2: y }));
      svg.append(s('text', { x: L - 6, y: y + 3.5, 'text-anchor': 'end', text: format(left.max * f) }));
      if (right) svg.append(s('text', { class: 'right-axis', x: Wc - R + 6, y: y + 3.5, text: format(right.max * f) }));
    }
    entries.forEach((e, i) => {
      const v = bar.value(e);
      if (v === null) return;
      const x = L + i * slot + slot * 0.15;
      const rect = s('rect', { class: bar.cls(e), x, y: left.y(v), width: Math.max(1, slot * 0.7), height: Math.max(1, left.y(0) - left.y(v)) });
      rect.append(s('title', { text: `#${e.id} ${e.status}: ${format(v)}` }));
      svg.append(rect);
    });
    if (right) {
      const pts = entries.map((e, i) => [L + i * slot + slot / 2, line.value(e)]).filter((p) => p[1] !== null);
      if (pts.length > 1) svg.append(s('polyline', { class: 'full', points: pts.map((p) => `${p[0].toFixed(1)},${right.y(p[1]).toFixed(1)}`).join(' ') }));
    }
    const first = entries[0], last = entries[entries.length - 1];
    svg.append(s('text', { x: L, y: Hc - 4, text: `#${first.id}` }));
    svg.append(s('text', { x: L + (entries.length - 1) * slot + slot / 2, y: Hc - 4, 'text-anchor': 'middle', text: `#${last.id}` }));
    replace(container, svg);
  }

  function renderCheckpointCharts(entries) {
    const kind = (e) => (e.status === 'FAILED' ? 'failed' : e.status === 'IN_PROGRESS' ? 'in_progress' : (e.is_savepoint ? 'savepoint' : 'completed'));
    barChart($('chart-duration'), entries,
      { value: (e) => (e.status === 'IN_PROGRESS' ? null : num(e.end_to_end_duration)), cls: kind },
      null, fmtDuration);
    barChart($('chart-size'), entries,
      { value: (e) => (e.status === 'COMPLETED' ? num(e.checkpointed_size) : null), cls: (e) => (e.is_savepoint ? 'savepoint' : 'written') },
      { value: (e) => (e.status === 'COMPLETED' ? num(e.state_size) : null) }, fmtBytes);
  }

  // ---------------------------------------------------------------- exceptions

  function renderExceptions(answer) {
    const history = (answer && answer.exceptionHistory) || {};
    const entries = Array.isArray(history.entries) ? history.entries : [];
    $('exceptions-count').textContent = entries.length
      ? `${entries.length} failure${entries.length === 1 ? '' : 's'}${history.truncated ? ' (older ones dropped)' : ''}`
      : '';
    if (!entries.length) {
      replace($('exceptions'), h('p', { class: 'muted', text: 'No exceptions: the job has not failed or restarted.' }));
      return;
    }
    const sorted = entries.slice().sort((a, b) => (num(b.timestamp) || 0) - (num(a.timestamp) || 0));
    replace($('exceptions'), sorted.slice(0, 20).map((e) => {
      const trace = String(e.stacktrace || '');
      const first = trace.split('\n')[0];
      const where = [e.taskName, e.location || e.endpoint].filter(Boolean).join(' @ ');
      const concurrent = Array.isArray(e.concurrentExceptions) ? e.concurrentExceptions.length : 0;
      return h('div', { class: 'exception' },
        h('div', { class: 'what', text: `${e.exceptionName || 'exception'}${first && first !== e.exceptionName ? ': ' + first : ''}` }),
        h('div', { class: 'where', text: `${fmtTime(e.timestamp)}${where ? ' · ' + where : ''}${concurrent ? ` · ${concurrent} concurrent` : ''}` }),
        trace ? h('details', {}, h('summary', { text: 'stack trace' }), h('pre', { text: trace })) : null);
    }));
  }

  // ---------------------------------------------------------------- configuration

  function renderConfig() {
    const dl = $('config');
    const rows = [];
    const group = (title) => rows.push(h('dt', { class: 'group', text: title }));
    const row = (k, v) => { if (v !== undefined && v !== null && v !== '') rows.push(h('dt', { text: k }), h('dd', { text: v })); };
    const c = state.checkpointConfig;
    if (c) {
      group('Checkpointing');
      row('mode', c.mode);
      row('interval', fmtDuration(num(c.interval)));
      row('timeout', fmtDuration(num(c.timeout)));
      row('min pause', fmtDuration(num(c.min_pause)));
      row('max concurrent', c.max_concurrent);
      row('tolerable failures', c.tolerable_failed_checkpoints);
      row('unaligned', c.unaligned_checkpoints === undefined ? null : String(c.unaligned_checkpoints));
      if (c.unaligned_checkpoints) row('aligned timeout', fmtDuration(num(c.aligned_checkpoint_timeout)));
      if (c.externalization) row('retained on cancel', c.externalization.enabled ? (c.externalization.delete_on_cancellation ? 'no (deleted)' : 'yes') : 'not retained');
      row('state backend', c.state_backend);
      row('checkpoint storage', c.checkpoint_storage);
      for (const [k, v] of Object.entries(c)) {
        if (['mode', 'interval', 'timeout', 'min_pause', 'max_concurrent', 'tolerable_failed_checkpoints', 'unaligned_checkpoints', 'aligned_checkpoint_timeout', 'externalization', 'state_backend', 'checkpoint_storage'].includes(k)) continue;
        if (v !== null && typeof v !== 'object') row(k.replace(/_/g, ' '), String(v));
      }
    }
    const job = state.job;
    if (job) {
      group('Job');
      row('type', job['job-type']);
      row('max parallelism', job.maxParallelism);
    }
    const g = state.config;
    if (g) {
      group('Process');
      row('flowstate version', g['flink-version']);
      row('revision', g['flink-revision']);
      row('time zone', g['timezone-name']);
      row('UI refresh', fmtDuration(state.interval));
    }
    replace(dl, rows);
  }

  // ---------------------------------------------------------------- actions

  function updateActionButtons() {
    const disabled = state.ended || state.unreachable || state.actionBusy || !state.jid;
    for (const id of ['btn-savepoint', 'btn-stop', 'btn-cancel']) {
      const b = $(id);
      b.disabled = disabled;
      b.title = state.ended ? 'the job has ended' : state.unreachable ? 'the job\'s API does not answer' : '';
    }
  }

  function result(kind, title, ...rest) {
    const el = $('action-result');
    el.dataset.state = kind;
    replace(el, h('div', { class: 'title', text: title }), ...rest);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Asks twice: the first click arms the button for a few seconds. */
  function confirmed(button, label) {
    if (button.dataset.armed === '1') {
      delete button.dataset.armed;
      button.classList.remove('confirm');
      button.textContent = button.dataset.label;
      return true;
    }
    button.dataset.label = button.textContent;
    button.dataset.armed = '1';
    button.classList.add('confirm');
    button.textContent = label;
    setTimeout(() => {
      if (button.dataset.armed === '1') {
        delete button.dataset.armed;
        button.classList.remove('confirm');
        button.textContent = button.dataset.label;
      }
    }, 5000);
    return false;
  }

  async function savepoint(stop) {
    const jid = state.jid;
    const dir = $('target-dir').value.trim();
    const body = stop ? { drain: false } : { 'cancel-job': false };
    if (dir) body[stop ? 'targetDirectory' : 'target-directory'] = dir;
    const what = stop ? 'Stop with savepoint' : 'Savepoint';
    state.actionBusy = true;
    updateActionButtons();
    const started = Date.now();
    try {
      result('pending', `${what}: triggering…`);
      const answer = await api('POST', `/jobs/${enc(jid)}/${stop ? 'stop' : 'savepoints'}`, body);
      if (stop) state.endRequested = 'stop';
      const rid = answer && answer['request-id'];
      if (!rid) throw new Error('the API answered without a request-id');
      for (;;) {
        result('pending', `${what}: in progress (${fmtDuration(Date.now() - started)})…`, h('div', { class: 'muted small', text: `request ${rid}` }));
        await sleep(SAVEPOINT_POLL_MS);
        let status;
        try {
          status = await api('GET', `/jobs/${enc(jid)}/savepoints/${enc(rid)}`);
        } catch (error) {
          // A stopped job's process may exit right after its savepoint: report what we know.
          if (stop && error instanceof ApiError && error.status === 0) {
            result('failed', `${what}: the job's API went away before the result was read; check the target directory.`);
            return;
          }
          throw error;
        }
        const id = status && status.status && status.status.id;
        if (id !== 'COMPLETED') continue;
        const op = status.operation || {};
        if (op.location) {
          result('completed', `${what} completed in ${fmtDuration(Date.now() - started)}`,
            h('code', { class: 'location', text: op.location }),
            stop ? h('div', { class: 'small', text: 'The job is stopping.' }) : null);
        } else {
          const cause = op['failure-cause'] || {};
          const trace = String(cause['stack-trace'] || '');
          result('failed', `${what} failed: ${cause.class || ''} ${trace.split('\n')[0]}`.trim(),
            trace ? h('details', {}, h('summary', { text: 'details' }), h('pre', { text: trace })) : null);
        }
        return;
      }
    } catch (error) {
      result('failed', `${what} failed: ${describe(error)}`);
    } finally {
      state.actionBusy = false;
      updateActionButtons();
      pollNow();
    }
  }

  async function cancelJob() {
    state.actionBusy = true;
    updateActionButtons();
    try {
      result('pending', 'Cancelling…');
      await api('PATCH', `/jobs/${enc(state.jid)}?mode=cancel`, {});
      state.endRequested = 'cancel';
      result('completed', 'Cancel requested: the job is being cancelled.');
    } catch (error) {
      result('failed', `Cancel failed: ${describe(error)}`);
    } finally {
      state.actionBusy = false;
      updateActionButtons();
      pollNow();
    }
  }

  function setupActions() {
    $('btn-savepoint').addEventListener('click', () => savepoint(false));
    $('btn-stop').addEventListener('click', (e) => { if (confirmed(e.currentTarget, 'Confirm stop')) savepoint(true); });
    $('btn-cancel').addEventListener('click', (e) => { if (confirmed(e.currentTarget, 'Confirm cancel')) cancelJob(); });
    $('job-select').addEventListener('change', (e) => {
      location.hash = 'job=' + enc(e.target.value);
      pollNow();
    });
    window.addEventListener('hashchange', pollNow);
  }

  // ---------------------------------------------------------------- start

  setupToken();
  setupActions();
  updateActionButtons();
  poll();
})();
