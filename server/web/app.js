// toplog web page: reads the public REST API (same origin) and draws it.
// No framework, no build step; API data goes into the page through
// textContent and setAttribute only.
'use strict';

const KEY_STORE = 'toplog-key';           // sessionStorage: this tab only
const REFRESH_MS = 5000;
const RANGES = { '15m': 15 * 60e3, '1h': 3600e3, '6h': 6 * 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
// chart interval per range: ~15-170 points, always aligned and under the API's 10,000
const INTERVALS = { '15m': '1m', '1h': '1m', '6h': '5m', '24h': '15m', '7d': '1h', '30d': '6h' };
const LADDER = [['1m', 60e3], ['5m', 300e3], ['15m', 900e3], ['1h', 3600e3], ['6h', 6 * 3600e3], ['1d', 86400e3]];
const DIMS = ['endpoint', 'user_id', 'status_code'];

const state = {
  key: sessionStorage.getItem(KEY_STORE) || '',
  range: '1h',
  metric: 'frequency',
  filter: null,         // {by, key}: charts for one key only
  gen: 0,               // refresh generation; stale answers are dropped
  inFlight: false,
  signedIn: false,
  forbidden: new Set(), // sections the key's role may not read: not asked again
};

const $ = (id) => document.getElementById(id);

// ---------- API ----------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// GET a JSON answer; throws ApiError with the server's code and message.
async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  const headers = { Accept: 'application/json' };
  if (state.key) headers.Authorization = 'Bearer ' + state.key;
  let res;
  try {
    res = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new ApiError(0, 'network', 'cannot reach the node (' + e.message + ')');
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (res.ok && body && body.status !== 'error') return body;
  const err = body && body.error;
  const code = (err && err.code) || 'http_' + res.status;
  const msg = (err && (typeof err === 'string' ? err : err.message)) || (body && body.message) || res.statusText || 'request failed';
  throw new ApiError(res.status, code, msg);
}

// ---------- formatting ----------

const nf = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
function fmtCount(v) {
  if (v == null) return '–';
  if (!Number.isInteger(v) && Math.abs(v) < 100) return String(Number(v.toFixed(1)));
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + 'M';
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(v >= 1e5 ? 0 : 1) + 'k';
  return nf.format(v);
}
function fmtMs(v) {
  if (v == null) return '–';
  if (v === 0) return '0';
  if (v >= 1000) return (v / 1000).toFixed(v >= 1e4 ? 1 : 2) + ' s';
  return v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0) + ' ms';
}
function fmtPct(v) {
  if (v == null) return '–';
  const p = v * 100;
  return (p === 0 || p >= 10 ? p.toFixed(p === 0 || p === 100 ? 0 : 1) : p.toFixed(2)) + '%';
}
function fmtBytes(v) {
  if (v == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + ' ' + u[i];
}
const num = (v) => (typeof v === 'number' ? String(Number(v.toPrecision(4))) : String(v));
function fmtMetric(metric, v) {
  if (metric === 'frequency' || metric === 'errors') return fmtCount(v);
  if (metric === 'error_rate') return fmtPct(v);
  return fmtMs(v);
}
const pad = (n) => String(n).padStart(2, '0');
const hhmm = (d) => pad(d.getHours()) + ':' + pad(d.getMinutes());
const mmdd = (d) => pad(d.getMonth() + 1) + '-' + pad(d.getDate());
function fmtTime(t) {
  if (t == null) return '–';
  const d = new Date(t);
  if (isNaN(d)) return String(t);
  return d.getFullYear() + '-' + mmdd(d) + ' ' + hhmm(d) + ':' + pad(d.getSeconds());
}
// a timestamp the API gave: RFC 3339, epoch ms, or (alert history) epoch microseconds
function toMs(t) {
  if (typeof t === 'number') return t > 1e14 ? t / 1000 : t;
  return Date.parse(t);
}

// ---------- small DOM helpers ----------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) e.append(kid);   // strings become text nodes
  return e;
}
// the note paragraph of the card holding `node`
function noteOf(node) { return node.closest('.card').querySelector('.note'); }
function setNote(node, text, isError) {
  const n = noteOf(node);
  n.textContent = text || '';
  n.classList.toggle('error', !!isError);
}
function errorText(e) {
  if (e.status === 403) return 'Your key’s role may not read this (' + e.code + ').';
  return 'Error: ' + e.message + (e.code ? ' (' + e.code + ')' : '');
}

// ---------- range ----------

function currentRange() {
  if (state.range === 'custom') {
    const s = Date.parse($('custom-start').value), e = Date.parse($('custom-end').value);
    if (isNaN(s) || isNaN(e) || s >= e) return null;
    return { start: s, end: e, interval: pickInterval(e - s), live: false };
  }
  const end = Date.now();
  return { start: end - RANGES[state.range], end, interval: INTERVALS[state.range], live: true };
}
function pickInterval(span) {
  for (const [name, ms] of LADDER) if (span / ms <= 300) return name;
  return '1d';
}
function intervalMs(name) { return LADDER.find((l) => l[0] === name)[1]; }

// ---------- loading ----------

// Each loader fetches, then returns a function that renders (called together,
// so the page never shows a mix of two refreshes).
function loaders(r) {
  const range = { start: r.start, end: r.end };
  const list = DIMS.map((by) => ['top-' + by, async () => {
    const body = await api('/api/v1/requests/top-k', { k: 10, metric: state.metric, by, ...range });
    return () => renderTop(by, body);
  }]);
  const f = state.filter ? { [state.filter.by]: state.filter.key } : {};
  const series = (metric) => api('/api/v1/requests/timeseries', { metric, interval: r.interval, ...range, ...f })
    .then((b) => ((b.data && b.data[0]) || { points: [] }).points);
  list.push(['chart-requests', async () => {
    const p = await series('frequency');
    return () => drawChart($('chart-requests'), { r, kind: 'bars', fmt: fmtCount, series: [{ cls: 'bar', name: 'requests', points: p }] });
  }]);
  list.push(['chart-error-rate', async () => {
    const p = await series('error_rate');
    return () => drawChart($('chart-error-rate'), { r, kind: 'lines', fmt: fmtPct, series: [{ cls: 's-err', name: 'error rate', points: p }] });
  }]);
  list.push(['chart-latency', async () => {
    const [p50, p99] = await Promise.all([series('latency_p50'), series('latency_p99')]);
    return () => drawChart($('chart-latency'), { r, kind: 'lines', fmt: fmtMs, log: true,
      series: [{ cls: 's-p50', name: 'p50', points: p50 }, { cls: 's-p99', name: 'p99', points: p99 }] });
  }]);
  list.push(['history', async () => {
    const day = (ms) => new Date(ms).toISOString().slice(0, 10);
    const body = await api('/api/v1/requests/history', { start_date: day(Date.now() - 29 * 86400e3), end_date: day(Date.now()) });
    return () => renderHistory(body.data || []);
  }]);
  list.push(['alerts', async () => {
    const body = await api('/api/v1/requests/alerts');
    return () => renderAlerts(body.alerts || []);
  }]);
  list.push(['alert-history', async () => {
    const body = await api('/api/v1/alerts/history', { limit: 20 });
    return () => renderAlertHistory(body.data || []);
  }]);
  list.push(['storage', async () => {
    const body = await api('/api/v1/storage');
    return () => renderStorage(body.data || {});
  }]);
  list.push(['retention', async () => {
    const body = await api('/api/v1/retention');
    return () => renderRetention(body.data || {});
  }]);
  list.push(['cluster', async () => {
    const body = await api('/api/v1/cluster');
    return () => renderCluster(body.data || {});
  }]);
  return list;
}

// Fetch everything for the current range; render once all answers are in.
async function refresh() {
  const r = currentRange();
  if (!r) { showGlobalError('Pick a start before the end.'); return; }
  const gen = ++state.gen;
  state.inFlight = true;
  try {
    // Not signed in yet: ask once before asking everything, since every
    // refused key spends from the node's per-address failed-auth budget.
    if (!state.signedIn) {
      try {
        await api('/api/v1/retention');
      } catch (e) {
        if (gen !== state.gen) return;
        if (e.status === 401) {
          showSignin(state.key ? 'That key was refused (unknown or expired).' : '');
          sessionStorage.removeItem(KEY_STORE);   // do not try it again on the next load
          return;
        }
        if (e.status === 429 || e.status === 0) { showSignin('The node refused for now: ' + e.message); return; }
        // any other answer (a 403 for a writer key, say) means the key is good
      }
      if (gen !== state.gen) return;
    }
    const jobs = loaders(r).filter(([id]) => !state.forbidden.has(id));
    const results = await Promise.allSettled(jobs.map(([, load]) => load()));
    if (gen !== state.gen) return;                       // a newer refresh won
    if (results.some((x) => x.status === 'rejected' && x.reason.status === 401)) {
      showSignin(state.key ? 'That key was refused (missing, unknown or expired).' : '');
      return;
    }
    showDash();
    showGlobalError('');
    results.forEach((x, i) => {
      const node = $(jobs[i][0]);
      try {
        if (x.status === 'fulfilled') { x.value(); setNote(node, noteFor(jobs[i][0])); }
        else {
          clearSection(node);
          setNote(node, errorText(x.reason), x.reason.status !== 403);
          if (x.reason.status === 403) state.forbidden.add(jobs[i][0]);
        }
      } catch (e) {
        setNote(node, 'Could not show this: ' + e.message, true);
      }
    });
    const rangeEl = $('range');
    rangeEl.dataset.start = String(r.start);
    rangeEl.dataset.end = String(r.end);
    rangeEl.dataset.interval = r.interval;
    rangeEl.dataset.metric = state.metric;
    rangeEl.dataset.filter = state.filter ? state.filter.by + '=' + state.filter.key : '';
    rangeEl.textContent = fmtTime(r.start) + ' → ' + fmtTime(r.end) + ' · every ' + r.interval;
    $('updated').textContent = 'updated ' + hhmm(new Date()) + ':' + pad(new Date().getSeconds());
  } catch (e) {
    if (gen === state.gen) showGlobalError('Could not refresh: ' + e.message);
  } finally {
    if (gen === state.gen) state.inFlight = false;
  }
}
function noteFor(id) {
  if ($(id)._emptyNote) return $(id)._emptyNote;
  if (id.startsWith('chart-') && state.filter) return 'only ' + state.filter.by + ' = ' + labelKey(state.filter.by, state.filter.key);
  return '';
}
function clearSection(node) {
  if (node.classList.contains('chart')) { node.replaceChildren(); node._spec = null; }
  else node.replaceChildren();
  if (node.id === 'history') $('history-chart').replaceChildren();
}
function showGlobalError(text) {
  const g = $('global-error');
  g.textContent = text;
  g.hidden = !text;
}

// ---------- sign-in ----------

function showSignin(message) {
  state.signedIn = false;
  $('dash').hidden = true;
  $('controls').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('signin-key').focus();
}
function showDash() {
  if (!state.signedIn) {
    state.signedIn = true;
    $('signin').hidden = true;
    $('dash').hidden = false;
    $('controls').hidden = false;
  }
  $('signout').hidden = !state.key;       // with auth off there is nothing to sign out of
}
function signOut() {
  sessionStorage.removeItem(KEY_STORE);
  state.key = '';
  state.gen++;                            // drop answers still on their way
  state.inFlight = false;
  state.forbidden.clear();
  for (const by of DIMS) $('top-' + by).replaceChildren();
  showSignin('');
  $('signin-key').value = '';
}

// ---------- top-K tables ----------

function labelKey(by, key) {
  if (by === 'user_id' && key === '') return '(anonymous)';
  return key;
}
function renderTop(by, body) {
  const table = $('top-' + by);
  const rows = body.data || [];
  const exact = !(body.meta && body.meta.exact === false);
  table.closest('.card').querySelector('.inexact').hidden = exact;
  table.dataset.exact = String(exact);
  const head = el('tr', null, el('th', null, '#'), el('th', null, by === 'user_id' ? 'user' : by === 'status_code' ? 'status' : 'endpoint'),
    el('th', null, $('metric-select').selectedOptions[0].textContent), el('th', null, 'count'));
  const tbody = el('tbody');
  rows.forEach((row, i) => {
    const key = row.request_id;
    const btn = el('button', { type: 'button', class: 'keybtn', title: labelKey(by, key) + ' (click: charts for this key only)' }, labelKey(by, key));
    btn.addEventListener('click', () => setFilter(by, key));
    let value = fmtMetric(state.metric, row.metric_value);
    const valTd = el('td', null);
    if (row.lower != null && row.upper != null) {
      value = '≈' + value;
      valTd.title = 'between ' + fmtMetric(state.metric, row.lower) + ' and ' + fmtMetric(state.metric, row.upper);
    }
    valTd.textContent = value;
    const tr = el('tr', { 'data-key': key, 'data-value': String(row.metric_value), 'data-count': String(row.count) },
      el('td', { class: 'rank' }, String(i + 1)), el('td', null, btn), valTd, el('td', null, fmtCount(row.count)));
    if (state.filter && state.filter.by === by && state.filter.key === key) tr.classList.add('selected');
    tbody.append(tr);
  });
  table.replaceChildren(el('thead', null, head), tbody);
  table._emptyNote = rows.length ? '' : 'No requests in this range.';   // shown by refresh()
}

function setFilter(by, key) {
  state.filter = { by, key };
  $('chip-text').textContent = 'showing: ' + ({ user_id: 'user ', status_code: 'status ' }[by] || '') + labelKey(by, key);
  $('chip').hidden = false;
  refresh();
}
function clearFilter() {
  state.filter = null;
  $('chip').hidden = true;
  refresh();
}

// ---------- charts (SVG) ----------

const SVGNS = 'http://www.w3.org/2000/svg';
function sv(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.append(e);
  return e;
}

// the smallest 1, 2, 2.5 or 5 x 10^n at or above v (for round axis labels)
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v * 0.999999) return f * p;
  return 10 * p;
}

// spec: {r (range), kind: 'bars'|'lines', fmt, series: [{cls, name, points: [{time, value}]}]}
function drawChart(box, spec) {
  box._spec = spec;
  const W = Math.max(260, Math.round(box.clientWidth || 600)), H = 170;
  const m = { l: 52, r: 10, t: 8, b: 22 };
  const step = intervalMs(spec.r.interval);
  const pts = spec.series.map((s) => s.points.map((p) => ({ t: toMs(p.time), v: p.value })));
  const all = pts.flat();
  const t0 = all.length ? Math.min(...all.map((p) => p.t)) : spec.r.start;
  const t1 = all.length ? Math.max(...all.map((p) => p.t)) + step : spec.r.end;
  const values = all.map((p) => p.v).filter((v) => v != null);
  box.dataset.points = String(pts[0].length);
  box.dataset.total = String(pts[0].reduce((a, p) => a + (p.v || 0), 0));   // for tests: the first series' sum
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  let y, yTicks;
  if (spec.log) {
    // log scale (latency: a p99 tail would flatten p50): ticks at powers of ten
    const pos = values.filter((v) => v > 0);
    const lo = Math.floor(Math.log10(pos.length ? Math.min(...pos) : 1));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(pos.length ? Math.max(...pos) : 10)));
    y = (v) => H - m.b - ((Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (H - m.t - m.b);
    yTicks = [];
    for (let e = lo; e <= hi; e += Math.ceil((hi - lo) / 4)) yTicks.push(10 ** e);
  } else {
    const vmax = niceCeil(values.length ? Math.max(...values) : 0);
    y = (v) => H - m.b - (v / vmax) * (H - m.t - m.b);
    yTicks = [0, vmax / 2, vmax];
  }

  const svg = sv('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': spec.series.map((s) => s.name).join(', ') });
  // y axis: 0, half, max (or powers of ten)
  yTicks.forEach((v, i) => {
    sv('line', { class: i ? 'grid-line' : 'axis', x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }, svg);
    sv('text', { x: m.l - 4, y: y(v) + 3, 'text-anchor': 'end' }, svg).textContent = spec.fmt(v);
  });
  // x axis: about five time ticks
  const long = t1 - t0 > 2 * 86400e3, daily = step >= 86400e3;
  const ticks = Math.max(2, Math.min(6, Math.floor((W - m.l) / 90)));
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks, d = new Date(t);
    const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
    sv('line', { class: 'axis', x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 3 }, svg);
    sv('text', { x: x(t), y: H - 6, 'text-anchor': anchor }, svg).textContent = daily ? d.toISOString().slice(5, 10) : long ? mmdd(d) + ' ' + pad(d.getHours()) + 'h' : hhmm(d);
  }
  const bw = Math.max(1, x(t0 + step) - x(t0));
  if (spec.kind === 'bars') {
    for (const p of pts[0]) {
      if (!p.v) continue;
      sv('rect', { class: spec.series[0].cls, x: x(p.t) + bw * 0.1, y: y(p.v), width: Math.max(1, bw * 0.8), height: y(0) - y(p.v) }, svg);
    }
  } else {
    spec.series.forEach((s, i) => {
      let d = '', pen = false;
      const lone = [];
      pts[i].forEach((p, j) => {
        if (p.v == null) { pen = false; return; }
        const cx = (x(p.t) + bw / 2).toFixed(1), cy = y(p.v).toFixed(1);
        d += (pen ? 'L' : 'M') + cx + ' ' + cy;
        const prev = pts[i][j - 1], next = pts[i][j + 1];
        if ((!prev || prev.v == null) && (!next || next.v == null)) lone.push([cx, cy]);
        pen = true;
      });
      if (d) sv('path', { class: 'line ' + s.cls, d }, svg);
      for (const [cx, cy] of lone) sv('circle', { class: s.cls, cx, cy, r: 2 }, svg);
    });
  }
  // hover: one transparent column per point, with a title tooltip
  pts[0].forEach((p, j) => {
    const hit = sv('rect', { class: 'hover', x: x(p.t), y: m.t, width: bw, height: H - m.t - m.b }, svg);
    const lines = spec.series.map((s, i) => (spec.series.length > 1 ? s.name + ': ' : '') + (pts[i][j] && pts[i][j].v != null ? spec.fmt(pts[i][j].v) : '–'));
    sv('title', null, hit).textContent = spec.tip ? spec.tip(j) : fmtTime(p.t) + '\n' + lines.join('\n');
  });
  if (!values.length || (spec.kind === 'bars' && !values.some((v) => v > 0))) {
    sv('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, svg).textContent = 'no requests in this range';
  }
  box.replaceChildren(svg);
}

// redraw charts at their new width when the window changes size
let resizeTimer = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const box of document.querySelectorAll('.chart')) if (box._spec) drawChart(box, box._spec);
  }, 150);
});

// ---------- history ----------

function renderHistory(days) {
  const spec = {
    r: { start: Date.parse(days.length ? days[0].date : 0), end: Date.now(), interval: '1d' },
    kind: 'bars', fmt: fmtCount,
    tip: (j) => days[j].date + '\n' + fmtCount(days[j].total_requests) + ' requests\nerrors ' + fmtPct(days[j].error_rate) +
      '\navg ' + fmtMs(days[j].average_latency) + ', p99 ' + fmtMs(days[j].p99_latency),
    series: [{ cls: 'bar', name: 'requests per day', points: days.map((d) => ({ time: d.date + 'T00:00:00Z', value: d.total_requests })) }],
  };
  drawChart($('history-chart'), spec);
  const t = $('history');
  const tbody = el('tbody');
  for (const d of days.slice().reverse()) {
    tbody.append(el('tr', { 'data-date': d.date }, el('td', null, d.date), el('td', null, fmtCount(d.total_requests)),
      el('td', null, fmtPct(d.error_rate)), el('td', null, fmtMs(d.average_latency)), el('td', null, fmtMs(d.p99_latency))));
  }
  t.replaceChildren(el('thead', null, el('tr', null, el('th', null, 'day'), el('th', null, 'requests'),
    el('th', null, 'errors'), el('th', null, 'avg'), el('th', null, 'p99'))), tbody);
}

// ---------- alerts ----------

function tag(text) { return el('span', { class: 'tag ' + text }, text); }
const ruleNames = new Map();   // rule_id -> name, learned from active alerts for the history
function renderAlerts(alerts) {
  const ul = $('alerts');
  for (const a of alerts) if (a.rule_id && a.rule) ruleNames.set(a.rule_id, a.rule);
  ul.replaceChildren(...alerts.map((a) => {
    const li = el('li', { 'data-alert-id': a.alert_id || '' }, tag(a.severity || 'alert'), tag(a.state || ''),
      el('strong', null, a.rule || a.rule_id || ''), ' ', a.description || a.key || '');
    const when = a.started_at || a.timestamp;
    li.append(el('div', { class: 'muted small' }, 'value ' + num(a.value) + ' vs ' + (typeof a.threshold === 'number' ? num(a.threshold) : JSON.stringify(a.threshold)) +
      (when ? ' · since ' + fmtTime(toMs(when)) : '') + (a.silenced ? ' · silenced' : '') + (a.acknowledged ? ' · acknowledged' : '')));
    return li;
  }));
  if (!alerts.length) ul.append(el('li', { class: 'muted' }, 'No active alerts.'));
}
function renderAlertHistory(items) {
  const ul = $('alert-history');
  ul.replaceChildren(...items.map((h) => {
    const what = [h.kind, h.state].filter(Boolean).map(tag);
    const rule = ruleNames.get(h.rule_id);
    const detail = (rule ? rule + ': ' : '') + (h.key != null ? h.key : h.channel_id || h.rule_id || '');
    const extra = h.value != null ? ' · value ' + num(h.value) : h.error ? ' · ' + h.error : '';
    return el('li', null, el('span', { class: 'muted small' }, fmtTime(toMs(h.at || h.time)) + ' '), ...what, detail, extra);
  }));
  if (!items.length) ul.append(el('li', { class: 'muted' }, 'Nothing yet.'));
}

// ---------- storage, retention, cluster ----------

function kv(pairs) {
  const dl = el('dl', { class: 'kv' });
  for (const [k, v] of pairs) dl.append(el('dt', null, k), el('dd', null, v == null ? '–' : String(v)));
  return dl;
}
function renderStorage(s) {
  const tiers = s.tiers || {};
  const head = el('tr', null, el('th', null, 'tier'), el('th', null, 'rows', el('span', { class: 'muted' }, '/buckets')), el('th', null, 'size'), el('th', null, 'oldest'));
  const tbody = el('tbody');
  for (const [name, t] of Object.entries(tiers)) {
    const count = el('td', { title: t.rows != null ? 'rows' : 'buckets, ' + t.in_memory + ' in memory' }, fmtCount(t.rows != null ? t.rows : t.buckets));
    const size = t.bytes != null ? fmtBytes(t.bytes) : '–';
    tbody.append(el('tr', { 'data-tier': name }, el('td', null, name), count,
      el('td', null, size), el('td', { title: t.oldest || '' }, t.oldest ? fmtTime(Date.parse(t.oldest)).slice(0, 10) : '–')));
  }
  const table = el('table', { class: 'num' }, el('thead', null, head), tbody);
  const a = s.archive || {};
  const errs = (a.last_errors || []).length;
  const kept = s.kept_from || {};
  $('storage').replaceChildren(table, kv([
    ['memtable', s.memtable ? fmtCount(s.memtable.rows) + ' rows, ' + fmtBytes(s.memtable.bytes) : null],
    ['raw kept from', kept.raw ? fmtTime(Date.parse(kept.raw)) : null],
    ['archive', (a.status || '–') + (a.owned === false ? ' (not owner)' : '') + (errs ? ' · ' + errs + ' recent errors' : '')],
    ['archive at', a.location],
    ['maintenance', s.maintenance ? (s.maintenance.failing_passes ? s.maintenance.failing_passes + ' failing passes' : 'ok') : null],
  ]));
}
function renderRetention(p) {
  const raw = p.raw || {}, ru = p.rollups || {};
  $('retention').replaceChildren(...kv([
    ['raw events', 'kept ' + raw.keep_for + ', local ' + raw.local_for + ', then archive'],
    ['1-minute rollups', ru.minute_keep_for],
    ['1-hour rollups', ru.hour_keep_for],
    ['1-day rollups', ru.day_keep_for],
  ]).childNodes);
}
function renderCluster(c) {
  const box = $('cluster');
  if (!c.clustered) { box.replaceChildren(el('p', { class: 'muted' }, 'Single node (not clustered).')); return; }
  const members = el('ul', { class: 'list' }, ...(c.members || []).map((m) =>
    el('li', null, 'node ' + m.id + ' · ' + (m.role || '') + (m.id === c.leader_id ? ' · leader' : '') + ' · ' + (m.url || ''))));
  box.replaceChildren(kv([
    ['node', c.node_id], ['role', c.role], ['leader', c.leader_id], ['term', c.term],
    ['commit / applied', (c.commit_index != null ? c.commit_index : '–') + ' / ' + (c.applied_index != null ? c.applied_index : '–')],
  ]), members);
  if (Array.isArray(c.shards)) box.append(shardTable(c.shards));
}
// A sharded cluster: each shard's replicas, leader, move under way, and
// this node's replica (lag, events, size) when it holds one.
function shardTable(shards) {
  const head = el('tr', null, ...['shard', 'replicas', 'leader', 'here', 'lag', 'events', 'size'].map((h) => el('th', null, h)));
  const tbody = el('tbody');
  for (const s of shards) {
    const here = s.here || null;
    const replicas = (s.replicas || []).join(', ') + (s.moving ? ' (moving ' + s.moving.from + ' → ' + s.moving.to + ')' : '');
    tbody.append(el('tr', { 'data-shard': String(s.shard) },
      el('td', null, String(s.shard)),
      el('td', null, replicas),
      el('td', null, s.leader_id != null ? 'node ' + s.leader_id : 'none'),
      el('td', null, here ? here.role : '–'),
      el('td', null, here ? fmtCount(here.lag) : '–'),
      el('td', null, here ? fmtCount(here.events) : '–'),
      el('td', null, here ? fmtBytes(here.segment_bytes) : '–')));
  }
  return el('table', { class: 'num', id: 'shards' }, el('thead', null, head), tbody);
}

// ---------- wiring ----------

function onRangeChange() {
  state.range = $('range-select').value;
  $('custom-range').hidden = state.range !== 'custom';
  if (state.range === 'custom') {
    // start the custom inputs at the range last shown
    const r = $('range').dataset;
    const local = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3); return d.toISOString().slice(0, 16); };
    if (!$('custom-start').value && r.start) { $('custom-start').value = local(+r.start); $('custom-end').value = local(+r.end); }
    return;
  }
  refresh();
}

function init() {
  $('range-select').value = state.range;
  $('range-select').addEventListener('change', onRangeChange);
  $('custom-apply').addEventListener('click', () => refresh());
  $('metric-select').addEventListener('change', () => { state.metric = $('metric-select').value; refresh(); });
  $('chip-clear').addEventListener('click', clearFilter);
  $('signout').addEventListener('click', signOut);
  $('signin').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const key = $('signin-key').value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $('signin-error').textContent = 'Checking…';
    refresh();
  });
  // live refresh: relative ranges only, one request round at a time
  setInterval(() => {
    if (state.signedIn && state.range !== 'custom' && !state.inFlight && !document.hidden) refresh();
  }, REFRESH_MS);
  refresh();
}

// keep stray failures out of the console as uncaught errors
window.addEventListener('unhandledrejection', (ev) => { ev.preventDefault(); showGlobalError('Unexpected error: ' + (ev.reason && ev.reason.message)); });

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
