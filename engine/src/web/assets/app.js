// Slipway dashboard: plain JavaScript over the JSON API, no build step.
// Every request carries the token from local storage (if any) as
// `Authorization: Bearer`; live progress is read from
// /api/deployments/{id}/stream with fetch() and a ReadableStream, because
// EventSource cannot send that header. Everything the API returns is put in
// the page as text (textContent), never as HTML. Charts are drawn by the
// vendored uPlot (/ui/vendor/uplot.min.js, global `uPlot`) on canvases.
'use strict';

const TOKEN_KEY = 'slipway.token';
const SCOPE_RANK = { read: 1, deploy: 2, admin: 3 };
const PIPELINE = ['check_services', 'checkout', 'build', 'deploy', 'release', 'processes', 'health_check', 'cutover'];
const STEP_LABEL = {
  check_services: 'services', checkout: 'checkout', build: 'build', deploy: 'deploy', release: 'release',
  processes: 'processes', health_check: 'health', cutover: 'cutover', watch: 'watch', retire: 'retire', cleanup: 'cleanup',
};
// The event that records a step's successful outcome.
const COMPLETES = {
  ServicesChecked: 'check_services', CheckedOut: 'checkout', ImageBuilt: 'build', ImageReused: 'build',
  WebContainerStarted: 'deploy', ReleaseCommandsRan: 'release', ProcessesStarted: 'processes',
  HealthCheckPassed: 'health_check', TrafficSwitched: 'cutover', ReleaseWatched: 'watch',
};

const app = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  who: null,            // {name, scope, authenticated} from /api/whoami
  runs: new Map(),      // deployment id -> run (folded from its events)
  streams: new Map(),   // deployment id -> AbortController of its live stream
  render: null,         // re-draws the current view
};

// ---- DOM ---------------------------------------------------------------

// h('td', {class: 'x', title: 'y', onclick: f}, 'text', child, ...)
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const short = (s, n = 8) => (s ? String(s).slice(0, n) : '');
// A deployment id, shortened: UUIDv7s made within a minute share their
// first 8 characters (a timestamp), so the random tail is kept too.
const shortId = (id) => (id ? `${String(id).slice(0, 8)}…${String(id).slice(-4)}` : '');
const enc = encodeURIComponent;

function notice(message, kind) {
  const el = $('notice');
  el.textContent = message || '';
  el.className = 'notice' + (kind ? ' ' + kind : '');
  el.hidden = !message;
}

function crumbs(...parts) {
  const nav = $('crumbs');
  nav.replaceChildren();
  parts.forEach(([label, href], i) => {
    if (i) nav.append(h('span', { class: 'sep' }, '/'));
    nav.append(href ? h('a', { href }, label) : h('span', {}, label));
  });
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '';
  if (ms < 1000) return ms + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60);
  return m + ' min ' + Math.round(s - m * 60) + ' s';
}

// A recorded time in the browser's zone, named (the CLI prints UTC).
function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { timeZoneName: 'short' });
}

function badge(state, text) {
  return h('span', { class: 'badge s-' + state, 'data-state': state }, text || state);
}

// ---- API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const hs = Object.assign({ Accept: 'application/json' }, extra);
  if (app.token) hs.Authorization = 'Bearer ' + app.token;
  return hs;
}

// Both error shapes: {"error": "..."} and {"error": {"code", "message"}}.
function errorText(status, text) {
  try {
    const e = JSON.parse(text).error;
    if (typeof e === 'string') return e;
    if (e && e.message) return e.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${status}` + (text ? `: ${text.slice(0, 200)}` : '');
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const text = await res.text();
  if (res.status === 401) showLogin('The API refused the token: ' + errorText(401, text));
  if (!res.ok) throw new ApiError(res.status, errorText(res.status, text));
  return text ? JSON.parse(text) : null;
}

// Reads a text/event-stream response: calls on[event](data) per event.
// Resolves true when the server sent `end`, false if the stream just stopped.
// `lastId`: the id of the last event received on an earlier connection,
// sent as `Last-Event-ID` so the server resumes after it (EventSource does
// this by itself; fetch must be told).
async function readStream(path, on, signal, lastId) {
  const extra = { Accept: 'text/event-stream' };
  if (lastId) extra['Last-Event-ID'] = String(lastId);
  const res = await fetch(path, { headers: headers(extra), signal });
  if (res.status === 401) showLogin('The API refused the token.');
  if (!res.ok) throw new ApiError(res.status, errorText(res.status, await res.text()));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '', event = 'message', data = [], ended = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return ended;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (data.length) {
          if (event === 'end') ended = true;
          if (on[event]) on[event](data.join('\n'));
        }
        event = 'message'; data = [];
      } else if (line.startsWith(':')) {
        // keep-alive comment
      } else {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') event = val;
        else if (field === 'data') data.push(val);
      }
    }
  }
}

// ---- identity ------------------------------------------------------------

function scopeAllows(needed) {
  const have = app.who ? SCOPE_RANK[app.who.scope] || 0 : 0;
  return have >= SCOPE_RANK[needed];
}

function why(needed) {
  if (!app.who) return 'sign in first';
  return scopeAllows(needed) ? '' : `needs scope ${needed}; token \`${app.who.name}\` has ${app.who.scope}`;
}

async function loadIdentity() {
  try {
    app.who = await api('GET', '/api/whoami');
  } catch (e) {
    app.who = null;
    if (e.status !== 401) notice('Could not ask the API who you are: ' + e.message);
  }
  drawIdentity();
}

function drawIdentity() {
  const box = $('identity');
  box.replaceChildren();
  if (app.who) {
    const label = app.who.authenticated === false ? 'no authentication' : `${app.who.name} · ${app.who.scope}`;
    box.append(h('span', { id: 'whoami', 'data-scope': app.who.scope }, label));
  }
  if (app.token) {
    box.append(h('button', { id: 'sign-out', type: 'button', onclick: signOut }, 'Sign out'));
  } else {
    box.append(h('button', { id: 'sign-in', type: 'button', onclick: () => showLogin('') }, 'Sign in'));
  }
}

function showLogin(reason) {
  $('login-reason').textContent = reason || 'Paste an API token.';
  $('login').hidden = false;
  $('token').value = '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  app.token = token;
  localStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  notice('');
  await loadIdentity();
  if (app.who) route();
}

function signOut() {
  app.token = '';
  localStorage.removeItem(TOKEN_KEY);
  stopStreams();
  app.who = null;
  loadIdentity().then(route);
}

// ---- deployments folded from events -----------------------------------------

function newRun(id) {
  return { id, events: [], steps: new Map(), status: 'running', failure: '', logs: [], end: null, project: '', environment: '' };
}

function runOf(id) {
  if (!app.runs.has(id)) app.runs.set(id, newRun(id));
  return app.runs.get(id);
}

function stepOf(run, name) {
  if (!run.steps.has(name)) run.steps.set(name, { name, state: 'pending', attempts: 0, started: null, finished: null, reason: '' });
  return run.steps.get(name);
}

function finishStep(run, name, state, at) {
  const s = stepOf(run, name);
  s.state = state;
  s.finished = at;
  if (!s.started) s.started = at;
}

// Applies one recorded event (the JSON of /events and of the stream) once.
function applyEvent(run, ev) {
  if (run.events.length && ev.version <= run.events[run.events.length - 1].version) return;
  run.events.push(ev);
  const p = ev.payload || {};
  const at = ev.recorded_at;
  switch (ev.type) {
    case 'DeploymentRequested':
      Object.assign(run, { project: p.project, environment: p.environment, ref: p.git_ref, mode: p.mode,
        requested: at, actor: ev.actor, dryRun: !!p.dry_run,
        kind: p.rollback_of ? 'rollback' : p.replay_of ? 'replay' : p.promoted_from ? 'promotion' : 'deploy' });
      break;
    case 'ApprovalRequired': run.awaiting = true; run.approvalsNeeded = p.approvals; run.phase = 'awaiting approval'; break;
    case 'DeploymentApproved':
      run.approvedBy = (run.approvedBy || []).concat(p.by);
      if (run.approvedBy.length >= (run.approvalsNeeded || 1)) { run.awaiting = false; run.phase = ''; }
      break;
    case 'DeploymentRejected': run.awaiting = false; run.phase = ''; run.rejectedBy = p.by; break;
    case 'StepDispatched': {
      run.awaiting = false;
      if (run.phase === 'awaiting approval') run.phase = '';
      const s = stepOf(run, p.step);
      s.state = 'running';
      s.attempts = p.attempt || s.attempts + 1;
      if (!s.started) s.started = at;
      break;
    }
    case 'StepFailed': finishStep(run, p.step, 'failed', at); stepOf(run, p.step).reason = p.reason; break;
    case 'StepSkipped': finishStep(run, p.step, 'skipped', at); break;
    case 'CheckedOut': run.commit = p.commit; finishStep(run, 'checkout', 'done', at); break;
    // Local mode without --migrate: the step ran, its commands did not.
    case 'ReleaseCommandsRan': finishStep(run, 'release', p.skipped ? 'skipped' : 'done', at); break;
    case 'TrafficSwitchRequested': { const s = stepOf(run, 'cutover'); s.state = 'running'; s.started = at; break; }
    // Traffic moved; not a success until the watch passes (or a rollback).
    case 'ReleaseWatchStarted': run.phase = 'watching'; break;
    case 'ReleaseRolledBack': run.phase = 'rolling back'; break;
    case 'DeploymentSucceeded': run.status = 'succeeded'; run.commit = p.commit || run.commit; run.finished = at; break;
    case 'DeploymentFailed':
      // One that ended before its first step (rejected, cancelled while it waited) names no step.
      run.status = 'failed'; run.failure = run.steps.size ? `${p.step}: ${p.reason}` : `before it started: ${p.reason}`; run.finished = at;
      // Only a cutover that started failed; one never reached is skipped (stepList).
      if (run.steps.get('cutover')?.state === 'running') finishStep(run, 'cutover', 'failed', at);
      break;
    default:
      if (COMPLETES[ev.type]) finishStep(run, COMPLETES[ev.type], 'done', at);
  }
}

// What a deployment's badge says: a running one may be watching its new
// release after the switch, or rolling back to the old one.
function shownStatus(run) {
  if (run.status === 'running' && run.phase) return run.phase;
  // No step dispatched yet: it waits behind another deployment of its environment.
  if (run.status === 'running' && run.events.length && !run.steps.size && !run.awaiting) return 'queued';
  return run.status;
}

function stepList(run) {
  const names = PIPELINE.concat([...run.steps.keys()].filter((n) => !PIPELINE.includes(n)));
  return names.map((n) => run.steps.get(n) || { name: n, state: run.status === 'running' ? 'pending' : 'skipped', attempts: 0 });
}

function stepMillis(s) {
  if (!s.started) return null;
  const end = s.finished ? new Date(s.finished) : (s.state === 'running' ? new Date() : null);
  return end ? end - new Date(s.started) : null;
}

function runMillis(run) {
  if (!run.requested) return null;
  return (run.finished ? new Date(run.finished) : new Date()) - new Date(run.requested);
}

// Loads a deployment's events, then follows it live until it ends.
// `onChange` redraws; `onLog` receives log lines (or null to reset them).
async function watchRun(id, onChange, onLog) {
  const run = runOf(id);
  if (app.streams.has(id)) return run;
  const ctl = new AbortController();
  app.streams.set(id, ctl);
  const listeners = {
    'deployment-event': (data) => { applyEvent(run, JSON.parse(data)); onChange(run); },
    log: (line) => { if (onLog) onLog(line); },
    end: (data) => { run.end = JSON.parse(data); onChange(run); },
    error: (data) => notice('The live stream failed: ' + errorText(500, data)),
  };
  (async () => {
    for (let attempt = 0; !ctl.signal.aborted; attempt++) {
      try {
        if (onLog) onLog(null);
        // After a drop, resume after the last event this page folded.
        const lastId = run.events.length ? run.events[run.events.length - 1].version : 0;
        if (await readStream(`/api/deployments/${enc(id)}/stream${onLog ? '' : '?logs=false'}`, listeners, ctl.signal, lastId)) break;
      } catch (e) {
        if (ctl.signal.aborted) break;
        // A request the server refuses (no such deployment, a malformed id,
        // no access) is not asked again: the page says so instead.
        if (e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429) {
          notice(e.message);
          run.missing = e.message;
          onChange(run);
          break;
        }
      }
      // Cut off without `end` (a restart, a proxy): catch up again shortly.
      await new Promise((r) => setTimeout(r, Math.min(1000 * (attempt + 1), 5000)));
    }
    if (app.streams.get(id) === ctl) app.streams.delete(id);
  })();
  return run;
}

function stopStreams() {
  for (const ctl of app.streams.values()) ctl.abort();
  app.streams.clear();
}

// ---- views -------------------------------------------------------------------

async function projectsView(view) {
  crumbs(['Projects', '#/projects']);
  const projects = await api('GET', '/api/projects');
  view.replaceChildren(h('h1', {}, 'Projects'), createProjectCard());
  if (!projects.length) {
    view.append(h('div', { class: 'card empty' }, 'No project yet. Create one above, or with ', h('code', {}, 'slipway project create NAME --repo URL'), '.'));
    return;
  }
  for (const p of projects) {
    const envs = (p.environments || []).map((e) => (typeof e === 'string' ? e : e.name || e.environment));
    const table = h('table', { class: 'env-list' },
      h('thead', {}, h('tr', {}, ['Environment', 'Active release', 'Commit', 'URL', 'Queue'].map((t) => h('th', {}, t)))));
    const body = h('tbody');
    table.append(body);
    view.append(h('section', { class: 'card project', 'data-project': p.name },
      h('div', { class: 'spread' }, h('h2', {}, p.name), h('span', { class: 'muted mono' }, p.repo || p.repository || (p.mirror_of ? 'mirror of ' + p.mirror_of : ''))),
      table));
    for (const e of envs) {
      const row = h('tr', { 'data-env': e }, h('td', {}, h('a', { href: `#/env/${enc(p.name)}/${enc(e)}` }, e)), h('td', { colspan: 4, class: 'muted' }, 'loading…'));
      body.append(row);
      api('GET', `/api/projects/${enc(p.name)}/environments/${enc(e)}`).then((env) => {
        const active = env.active || env.last_succeeded || null;
        row.replaceChildren(
          h('td', {}, h('a', { href: `#/env/${enc(p.name)}/${enc(e)}` }, e)),
          h('td', {}, active ? [h('a', { href: `#/deployment/${enc(active.deployment)}`, class: 'mono' }, shortId(active.deployment)), liveBadge(active.live)] : h('span', { class: 'muted' }, 'none')),
          h('td', { class: 'mono' }, active ? short(active.commit, 10) : ''),
          h('td', {}, urlOf(env, active)),
          h('td', {}, (env.queue || []).length ? badge('running', `${env.queue.length} queued`) : h('span', { class: 'muted' }, 'idle')));
      }).catch((err) => row.replaceChildren(h('td', {}, e), h('td', { colspan: 4, class: 'muted' }, err.message)));
    }
  }
}

// The serving release's live state (the host agent's supervision): a badge
// unless it simply runs.
function liveBadge(live) {
  if (!live || live.state === 'running') return null;
  const text = `${live.state.replace('_', '-')}, ${live.restarts} restart${live.restarts === 1 ? '' : 's'}` +
    (live.last_exit === null || live.last_exit === undefined ? '' : `, exit ${live.last_exit}`);
  return [' ', badge(live.state === 'unhealthy' || live.state === 'restarting' ? 'pending' : 'failed', text)];
}

function urlOf(env, active) {
  const url = env.url || (active && active.url);
  if (url && /^https?:\/\//.test(url)) return h('a', { href: url, target: '_blank', rel: 'noopener' }, url);
  if (active && active.web_port) return h('span', { class: 'muted' }, `port ${active.web_port} on the host`);
  return '';
}

// The environment's recent deployments: the list route when the API has
// it, else what the environment and this browser know of.
async function deploymentIds(project, env, envState) {
  try {
    const list = await api('GET', `/api/projects/${enc(project)}/environments/${enc(env)}/deployments?limit=20`);
    const items = Array.isArray(list) ? list : list.deployments || [];
    return items.map((d) => (typeof d === 'string' ? d : d.id || d.deployment));
  } catch (e) {
    if (e.status !== 404 && e.status !== 405) throw e;
  }
  const ids = [...remembered(project, env)];
  const active = envState.active || envState.last_succeeded;
  for (const id of [...(envState.queue || []), active && active.deployment]) if (id && !ids.includes(id)) ids.push(id);
  return ids;
}

function remembered(project, env) {
  try { return JSON.parse(localStorage.getItem(`slipway.recent.${project}.${env}`)) || []; } catch (_) { return []; }
}

function remember(project, env, id) {
  const ids = [id, ...remembered(project, env).filter((x) => x !== id)].slice(0, 20);
  localStorage.setItem(`slipway.recent.${project}.${env}`, JSON.stringify(ids));
}

function stepChips(run) {
  return h('div', { class: 'steps' }, stepList(run).map((s) =>
    h('span', { class: `step s-${s.state}`, 'data-step': s.name, 'data-state': s.state, title: `${s.name}: ${s.state}${s.reason ? ' — ' + s.reason : ''}` },
      h('b', {}, STEP_LABEL[s.name] || s.name), h('small', { 'data-since': s.state === 'running' ? s.started : null }, duration(stepMillis(s)) || s.state))));
}

function deploymentRow(id) {
  const tr = h('tr', { class: 'deployment', 'data-deployment': id });
  const draw = (run) => {
    tr.dataset.status = run.status;
    tr.replaceChildren(
      h('td', {}, h('a', { href: `#/deployment/${enc(id)}`, class: 'mono' }, shortId(id)), run.kind && run.kind !== 'deploy' ? h('div', { class: 'muted small' }, run.kind) : ''),
      h('td', {}, run.ref || '', h('div', { class: 'muted small mono' }, short(run.commit, 10))),
      h('td', { class: 'small' }, when(run.requested), h('div', { class: 'muted small' }, run.actor || '')),
      h('td', {}, badge(run.status, shownStatus(run)), run.failure ? h('div', { class: 'small muted' }, run.failure) : '', h('div', {}, deploymentActions(run))),
      h('td', {}, stepChips(run)),
      h('td', { class: 'small' }, duration(runMillis(run))));
  };
  draw(runOf(id));
  return { tr, draw };
}

// The environment's custom domains: listed, added and removed (admin scope).
function domainsCard(base) {
  const list = h('ul', { id: 'domains' });
  const input = h('input', { type: 'text', id: 'domain-name', placeholder: 'www.example.com or *.example.com', 'aria-label': 'Domain' });
  const addBtn = h('button', { id: 'domain-add', type: 'button', disabled: !scopeAllows('admin'), title: why('admin') }, 'Add domain');
  const draw = (listed) => list.replaceChildren(...(listed.domains.length ? listed.domains.map((d) => h('li', {},
    h('span', { class: 'mono' }, d), ' ',
    h('button', { type: 'button', class: 'link', disabled: !scopeAllows('admin'), title: why('admin'),
      onclick: () => api('DELETE', `${base}/domains/${enc(d)}`).then(draw, (e) => notice(e.message)) }, 'remove'))) :
    [h('li', { class: 'muted' }, 'No custom domain.')]));
  addBtn.addEventListener('click', () => {
    const name = input.value.trim();
    if (!name) return;
    api('PUT', `${base}/domains/${enc(name)}`).then((listed) => { input.value = ''; draw(listed); }, (e) => notice(e.message));
  });
  api('GET', `${base}/domains`).then(draw, (e) => notice(e.message));
  return h('div', { class: 'card' }, h('h3', {}, 'Domains'), list, h('div', { class: 'row' }, input, addBtn));
}

async function environmentView(view, project, env) {
  crumbs(['Environments', '#/'], [project, '#/projects'], [env, null]);
  const base = `/api/projects/${enc(project)}/environments/${enc(env)}`;
  let envState = await api('GET', base);
  let active = envState.active || envState.last_succeeded || null;
  const refInput = h('input', { type: 'text', id: 'deploy-ref', placeholder: 'ref (default branch)', 'aria-label': 'Git ref' });
  const deployBtn = h('button', { id: 'deploy', class: 'primary', type: 'button', disabled: !scopeAllows('deploy'), title: why('deploy') }, 'Deploy');
  const rollbackBtn = h('button', { id: 'rollback', type: 'button', disabled: !scopeAllows('deploy') || !active, title: why('deploy') || (active ? '' : 'nothing to roll back to') }, 'Roll back');
  const body = h('tbody', { id: 'deployments' });
  const history = historyCard(project, env);
  const activeLine = h('div', { class: 'muted', id: 'active' });
  const drawActive = () => activeLine.replaceChildren('Active release: ',
    active ? h('a', { href: `#/deployment/${enc(active.deployment)}`, class: 'mono' }, shortId(active.deployment)) : 'none',
    active && active.commit ? h('span', { class: 'mono' }, ' @ ' + short(active.commit, 10)) : '', ' ', urlOf(envState, active));
  drawActive();
  // A deployment that succeeds here is the new active release.
  const refreshActive = async () => {
    try {
      envState = await api('GET', base);
      active = envState.active || envState.last_succeeded || null;
      rollbackBtn.disabled = !scopeAllows('deploy') || !active;
      drawActive();
    } catch (e) { notice(e.message); }
  };
  view.replaceChildren(
    h('div', { class: 'card' },
      h('div', { class: 'spread' },
        h('div', {}, h('h1', {}, `${project} / ${env}`), activeLine),
        h('div', { class: 'row' }, refInput, deployBtn, rollbackBtn))),
    h('div', { class: 'card' }, h('h3', {}, 'Deployments'),
      h('table', {}, h('thead', {}, h('tr', {}, ['Deployment', 'Ref', 'Requested', 'Status', 'Steps', 'Took'].map((t) => h('th', {}, t)))), body)),
    history,
    h('div', { class: 'two' }, domainsCard(base), settingsCard(base)));

  const rows = new Map();
  const addRow = (id, first) => {
    if (rows.has(id)) return rows.get(id);
    const row = deploymentRow(id);
    rows.set(id, row);
    for (const none of body.querySelectorAll('tr.none')) none.remove();
    if (first) body.prepend(row.tr); else body.append(row.tr);
    return row;
  };
  const follow = (id) => {
    const row = rows.get(id);
    watchRun(id, (run) => {
      row.draw(run);
      // Ids are UUIDv7: a later deployment sorts after the active one.
      const newer = !active || String(id) > String(active.deployment);
      if (newer && run.end && run.end.status === 'succeeded' && !row.refreshed) {
        row.refreshed = true;
        refreshActive();
      }
      if (run.end && row.startedHere && !row.charted) {
        row.charted = true;
        history.refresh();
      }
    });
  };
  const started = async (request) => {
    try {
      const res = await request();
      remember(project, env, res.deployment);
      addRow(res.deployment, true).startedHere = true;
      follow(res.deployment);
      notice(res.queued_behind && res.queued_behind.length ? `Queued behind ${res.queued_behind.length} deployment(s).` : '', 'info');
    } catch (e) { notice(e.message); }
  };
  deployBtn.addEventListener('click', () => {
    const ref = refInput.value.trim();
    started(() => api('POST', `${base}/deployments`, ref ? { ref } : {}));
  });
  rollbackBtn.addEventListener('click', () => started(() => api('POST', `${base}/rollback`, {})));

  const ids = await deploymentIds(project, env, envState);
  if (!ids.length && !rows.size) body.append(h('tr', { class: 'none' }, h('td', { colspan: 6, class: 'empty' }, 'No deployment yet.')));
  for (const id of ids) {
    addRow(id, false);
    const run = runOf(id);
    if (run.end) continue;
    follow(id);
  }
}

async function deploymentView(view, id, tab) {
  const logLines = [];
  const logPre = h('pre', { class: 'log', id: 'log' });
  const summary = h('div', { class: 'card', id: 'summary' });
  const steps = h('div', { class: 'card' });
  const timeline = h('tbody', { id: 'timeline' });
  const replayBtn = h('button', { id: 'replay', type: 'button', disabled: true }, 'Replay');
  const tabs = h('nav', { class: 'tabs' },
    h('a', { href: `#/deployment/${enc(id)}`, class: tab === 'progress' ? 'active' : '' }, 'Progress & log'),
    h('a', { href: `#/deployment/${enc(id)}/timeline`, id: 'timeline-tab', class: tab === 'timeline' ? 'active' : '' }, 'Event timeline'));
  const progress = h('div', {}, steps, h('div', { class: 'card' }, h('h3', {}, 'Build and release log'), logPre));
  const audit = h('div', { class: 'card' },
    h('h3', {}, 'Recorded events (hash-chained)'),
    h('table', { class: 'timeline' }, h('thead', {}, h('tr', {}, ['#', 'Recorded at', 'Event', 'Actor', 'Hash', 'Payload'].map((t) => h('th', {}, t)))), timeline));
  view.replaceChildren(summary, tabs, tab === 'timeline' ? audit : progress);

  replayBtn.addEventListener('click', async () => {
    try {
      const res = await api('POST', `/api/deployments/${enc(id)}/replay`, {});
      location.hash = `#/deployment/${enc(res.deployment)}`;
    } catch (e) { notice(e.message); }
  });

  let drawn = 0;
  const draw = (run) => {
    if (!run.events.length) {
      // Nothing folded yet: loading, or the server refused the id.
      crumbs(['Environments', '#/'], [shortId(id), null]);
      delete summary.dataset.status;
      summary.replaceChildren(h('h1', {}, 'Deployment'), h('p', { class: 'muted' }, run.missing || 'Loading…'));
      if (run.missing) view.replaceChildren(summary);
      return;
    }
    crumbs(['Environments', '#/'], [run.project || '…', '#/projects'], [run.environment || '…', run.project ? `#/env/${enc(run.project)}/${enc(run.environment)}` : null], [shortId(id), null]);
    const final = run.status !== 'running';
    replayBtn.disabled = !final || !scopeAllows('deploy');
    replayBtn.title = why('deploy') || (final ? '' : 'replay a finished deployment');
    summary.dataset.status = run.status;
    summary.replaceChildren(
      h('div', { class: 'spread' },
        h('div', {}, h('h1', {}, 'Deployment ', h('span', { class: 'mono' }, shortId(id))), badge(run.status, shownStatus(run)),
          run.failure ? h('div', { class: 'muted' }, run.failure) : ''),
        h('div', { class: 'row' }, deploymentActions(run), replayBtn)),
      h('dl', { class: 'grid' },
        [['Project', run.project], ['Environment', run.environment], ['Ref', run.ref], ['Commit', short(run.commit, 12)],
          ['Kind', run.kind], ['Requested by', run.actor], ['Requested', when(run.requested)], ['Took', duration(runMillis(run))]]
          .map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v || '—')))));
    steps.replaceChildren(h('h3', {}, 'Steps'), h('table', { id: 'steps' },
      h('thead', {}, h('tr', {}, ['Step', 'State', 'Attempts', 'Started', 'Duration'].map((t) => h('th', {}, t)))),
      h('tbody', {}, stepList(run).map((s) => h('tr', { 'data-step': s.name, 'data-state': s.state },
        h('td', {}, s.name), h('td', {}, badge(s.state), s.reason ? h('div', { class: 'small muted' }, s.reason) : ''),
        h('td', {}, s.attempts || ''), h('td', { class: 'small' }, when(s.started)),
        h('td', { 'data-since': s.state === 'running' ? s.started : null }, duration(stepMillis(s))))))));
    for (; drawn < run.events.length; drawn++) timeline.append(timelineRow(run.events[drawn]));
  };
  const onLog = (line) => {
    if (line === null) { logLines.length = 0; logPre.textContent = ''; return; }
    logLines.push(line);
    const atBottom = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
    logPre.append(line + '\n');
    if (atBottom) logPre.scrollTop = logPre.scrollHeight;
  };
  // A fresh fold per page: the log lines come with the events.
  app.runs.delete(id);
  draw(await watchRun(id, draw, onLog));
}

function timelineRow(ev) {
  return h('tr', { class: 'event', 'data-version': ev.version, 'data-type': ev.type },
    h('td', {}, ev.version),
    h('td', { class: 'small', title: ev.recorded_at }, when(ev.recorded_at)),
    h('td', { class: 'type' }, ev.type),
    h('td', { class: 'small' }, ev.actor),
    h('td', { class: 'hash', title: 'SHA-256 over the stored event, chained to the previous one' }, ev.hash),
    h('td', {}, h('details', {}, h('summary', {}, 'payload'), h('pre', {}, JSON.stringify(ev.payload, null, 2)))));
}

// ---- charts ------------------------------------------------------------------

// A uPlot chart in `el` (the vendored library; without it, a line of text).
function plot(el, opts, data) {
  el.replaceChildren();
  if (typeof uPlot !== 'function') { el.textContent = 'charts unavailable (uplot.min.js did not load)'; return null; }
  return new uPlot(Object.assign({ legend: { show: true } }, opts), data, el);
}

const COLORS = { ok: '#16794c', bad: '#b42318', run: '#1d5fd1', warn: '#b54708', idle: '#8a93a3' };
const STEP_COLORS = ['#2454d6', '#16794c', '#b54708', '#7a5af8', '#0e9384', '#c11574', '#475467', '#b42318', '#3e4784', '#667085', '#039855'];

// Charts on a long page are drawn when they scroll into view: 400 canvases
// at once would hold the first paint back.
const lazyCharts = 'IntersectionObserver' in window ? new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting || !e.target.drawChart) continue;
    lazyCharts.unobserve(e.target);
    const draw = e.target.drawChart;
    delete e.target.drawChart;
    draw();
  }
}) : null;

function whenVisible(el, draw) {
  if (lazyCharts) { el.drawChart = draw; lazyCharts.observe(el); } else draw();
}

// ---- environments at a glance ---------------------------------------------------

const TRAFFIC_MINUTES = 60;

// The last hour minute by minute: requests/s and error rate (%), null for a
// minute no router reported.
function trafficSeries(traffic) {
  const byMinute = new Map((traffic || []).map((t) => [t.minute, t]));
  const now = Math.floor(Date.now() / 60000);
  const xs = [], rps = [], errs = [];
  for (let m = now - TRAFFIC_MINUTES + 1; m <= now; m++) {
    const t = byMinute.get(m);
    xs.push(m * 60);
    rps.push(t ? t.requests / 60 : null);
    errs.push(t ? (t.requests ? (100 * t.errors) / t.requests : 0) : null);
  }
  return [xs, rps, errs];
}

// Over the minutes the routers reported: the mean requests/s, the error rate.
function trafficTotals(traffic) {
  let requests = 0, errors = 0;
  const minutes = (traffic || []).length;
  for (const t of traffic || []) { requests += t.requests; errors += t.errors; }
  return { requests, errors, rps: minutes ? requests / (minutes * 60) : 0, rate: requests ? (100 * errors) / requests : 0 };
}

// Sets the x axis to [min, max] once drawn (uPlot would stretch a lone
// point's axis over years).
function xSpan(chart, min, max) {
  if (chart && isFinite(min) && isFinite(max)) chart.setScale('x', { min, max });
  return chart;
}

function trafficCell(glance) {
  const box = h('div', { class: 'spark', 'data-traffic': (glance.traffic || []).length });
  const totals = trafficTotals(glance.traffic);
  const figures = h('div', { class: 'small traffic-figures', 'data-requests': totals.requests, 'data-errors': totals.errors },
    `${totals.rps.toFixed(2)} req/s · ${totals.rate.toFixed(1)}% errors · ${totals.requests} requests`);
  if (!(glance.traffic || []).length) return h('div', {}, h('span', { class: 'muted small' }, 'no traffic sampled in the last hour'));
  const series = trafficSeries(glance.traffic);
  whenVisible(box, () => xSpan(plot(box, {
    width: 260, height: 70, legend: { show: false }, cursor: { show: false },
    axes: [{ show: false }, { show: false }, { show: false, scale: '%' }],
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(0.1, max * 1.2)] },
      '%': { range: [0, 100] } },
    series: [{}, { label: 'req/s', stroke: COLORS.run, fill: 'rgba(29,95,209,.12)', width: 1.5, points: { show: true, size: 5 } },
      { label: 'errors %', stroke: COLORS.bad, width: 1.5, scale: '%', points: { show: true, size: 4 } }],
  }, series), series[0][0], series[0][series[0].length - 1] + 60));
  return h('div', {}, box, figures);
}

function domainCell(glance) {
  const domains = glance.domains || [];
  if (!domains.length) return h('span', { class: 'muted small' }, 'none');
  return h('ul', { class: 'plain' }, domains.map((d) => {
    const state = d.failing ? 'failing' : d.not_after ? 'valid' : 'no certificate';
    const text = d.not_after ? `${d.source || 'certificate'} until ${new Date(d.not_after).toLocaleDateString()}` : state;
    return h('li', { 'data-domain': d.domain, 'data-cert': state, title: d.renewal || '' }, h('span', { class: 'mono' }, d.domain), ' ',
      badge(state === 'valid' ? 'succeeded' : state === 'failing' ? 'failed' : 'pending', text),
      d.failing ? h('div', { class: 'small muted' }, d.renewal) : '');
  }));
}

async function environmentsView(view) {
  crumbs();
  const started = performance.now();
  const glances = await api('GET', '/api/environments');
  const body = h('tbody', { id: 'glance' });
  view.replaceChildren(h('div', { class: 'spread' }, h('h1', {}, 'Environments'),
    h('span', { class: 'muted small' }, `${glances.length} environment(s) · traffic from the routers, last hour`)), h('div', { class: 'card' },
    h('table', { class: 'glance' }, h('thead', {}, h('tr', {}, ['Environment', 'Serving release', 'Domains & certificates', 'Traffic (last hour)'].map((t) => h('th', {}, t)))), body)));
  if (!glances.length) {
    body.append(h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No project yet. ', h('a', { href: '#/projects' }, 'Create one'), '.')));
  }
  for (const g of glances) {
    const active = g.active || null;
    const state = active ? (active.live ? active.live.state : 'running') : 'none';
    body.append(h('tr', { 'data-project': g.project, 'data-env': g.environment, 'data-live': state },
      h('td', {}, h('a', { href: `#/env/${enc(g.project)}/${enc(g.environment)}` }, h('b', {}, g.project), ' / ', g.environment),
        (g.queue || []).length ? h('div', {}, badge('running', g.running_status || `${g.queue.length} queued`)) : ''),
      h('td', {}, active ? [h('a', { href: `#/deployment/${enc(active.deployment)}`, class: 'mono' }, shortId(active.deployment)),
        ' ', badge(state === 'running' ? 'succeeded' : state === 'unhealthy' || state === 'restarting' ? 'pending' : 'failed', state),
        h('div', { class: 'muted small mono' }, short(active.commit, 10))] : h('span', { class: 'muted' }, 'nothing served')),
      h('td', {}, domainCell(g)),
      h('td', {}, trafficCell(g))));
  }
  // When the table was drawn, from navigation start (read by the benchmark).
  requestAnimationFrame(() => { window.slipwayGlanceAt = performance.now(); window.slipwayGlanceMs = performance.now() - started; });
  // At a glance means current: redrawn while shown.
  const shown = location.hash;
  setTimeout(() => { if (location.hash === shown && body.isConnected) route(); }, 15000);
}

// ---- actions ---------------------------------------------------------------------

function createProjectCard() {
  const name = h('input', { type: 'text', id: 'project-name', placeholder: 'name', 'aria-label': 'Project name' });
  const repo = h('input', { type: 'text', id: 'project-repo', placeholder: 'repository (absolute path or URL)', 'aria-label': 'Repository', class: 'wide' });
  const envs = h('input', { type: 'text', id: 'project-envs', placeholder: 'environments (default: test, live)', 'aria-label': 'Environments' });
  const btn = h('button', { id: 'project-create', type: 'button', class: 'primary', disabled: !scopeAllows('admin'), title: why('admin') }, 'Create project');
  btn.addEventListener('click', async () => {
    const body = { name: name.value.trim(), repo: repo.value.trim() };
    const list = envs.value.split(/[\s,]+/).filter(Boolean);
    if (list.length) body.environments = list;
    try {
      await api('POST', '/api/projects', body);
      await route();
      notice(`Project ${body.name} created.`, 'info');
    } catch (e) { notice(e.message); }
  });
  return h('div', { class: 'card', id: 'create-project' }, h('h3', {}, 'New project'), h('div', { class: 'row' }, name, repo, envs, btn));
}

// Settings: plain values shown, secret ones never (the API answers
// "(secret)"); a secret's new value is typed into a password field and sent,
// never read back.
function settingsCard(base) {
  const list = h('tbody', { id: 'settings' });
  const key = h('input', { type: 'text', id: 'setting-key', placeholder: 'KEY', 'aria-label': 'Setting key' });
  const value = h('input', { type: 'password', id: 'setting-value', placeholder: 'value', autocomplete: 'off', 'aria-label': 'Setting value' });
  const secret = h('input', { type: 'checkbox', id: 'setting-secret', checked: true });
  const save = h('button', { id: 'setting-save', type: 'button', disabled: !scopeAllows('admin'), title: why('admin') }, 'Set');
  const draw = (settings) => list.replaceChildren(...(Object.keys(settings).length ? Object.entries(settings).map(([k, v]) =>
    h('tr', { 'data-key': k, 'data-secret': v === '(secret)' ? 'yes' : 'no' },
      h('td', { class: 'mono' }, k),
      h('td', { class: 'mono' }, v === '(secret)' ? h('span', { class: 'muted' }, '•••••• (secret, write-only)') : v),
      h('td', {}, h('button', { type: 'button', class: 'link setting-unset', disabled: !scopeAllows('admin'), title: why('admin'),
        onclick: () => change({ unset: [k] }) }, 'unset')))) : [h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'No setting.'))]));
  const load = () => api('GET', `${base}/settings`).then(draw, (e) => notice(e.message));
  const change = async (body) => {
    try { await api('PUT', `${base}/settings`, body); await load(); } catch (e) { notice(e.message); }
  };
  save.addEventListener('click', async () => {
    const k = key.value.trim();
    if (!k) return;
    await change({ set: { [k]: { value: value.value, secret: secret.checked } } });
    key.value = ''; value.value = '';
  });
  load();
  return h('div', { class: 'card' }, h('h3', {}, 'Settings'),
    h('table', {}, h('thead', {}, h('tr', {}, ['Key', 'Value', ''].map((t) => h('th', {}, t)))), list),
    h('div', { class: 'row' }, key, value, h('label', { class: 'small' }, secret, ' secret'), save));
}

// Cancel, approve and reject a deployment, as its state allows and the
// token's scope permits.
function deploymentActions(run) {
  const box = h('span', { class: 'actions' });
  if (run.status !== 'running') return box;
  const act = (verb, label, cls) => h('button', { type: 'button', class: `${cls} act-${verb}`, disabled: !scopeAllows('deploy'), title: why('deploy'),
    onclick: async () => {
      try {
        await api('POST', `/api/deployments/${enc(run.id)}/${verb}`, {});
        notice(`${label}: recorded.`, 'info');
      } catch (e) { notice(e.message); }
    } }, label);
  if (run.awaiting) box.append(act('approve', 'Approve', 'primary'), act('reject', 'Reject', ''));
  box.append(act('cancel', 'Cancel', ''));
  return box;
}

// ---- history charts --------------------------------------------------------------

function outcomeOf(d) {
  if (d.rollback_of || /rolling back/.test(d.status)) return 'rollback';
  if (d.status === 'succeeded') return 'succeeded';
  if (/^failed/.test(d.status)) return 'failed';
  return 'running';
}

// Deployments over time (seconds taken), one series per outcome.
function timelineChart(el, deployments) {
  const done = deployments.filter((d) => d.requested_at).sort((a, b) => new Date(a.requested_at) - new Date(b.requested_at));
  const xs = done.map((d) => new Date(d.requested_at).getTime() / 1000);
  const series = ['succeeded', 'failed', 'rollback'].map((o) => done.map((d) => (outcomeOf(d) === o ? (d.total_ms || 0) / 1000 : null)));
  const counts = {};
  for (const d of done) counts[outcomeOf(d)] = (counts[outcomeOf(d)] || 0) + 1;
  el.dataset.succeeded = counts.succeeded || 0;
  el.dataset.failed = counts.failed || 0;
  el.dataset.rollback = counts.rollback || 0;
  const dots = (label, color) => ({ label, stroke: color, fill: color, paths: () => null, points: { show: true, size: 9, fill: color } });
  const pad = Math.max(3600, ((xs[xs.length - 1] - xs[0]) || 0) * 0.05);
  xSpan(plot(el, {
    width: Math.min(1100, el.clientWidth || 1100), height: 180,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [{}, { label: 'seconds', size: 50 }],
    series: [{}, dots('succeeded', COLORS.ok), dots('failed', COLORS.bad), dots('rollback', COLORS.warn)],
  }, [xs, ...series]), xs[0] - pad, xs[xs.length - 1] + pad);
}

// Each step's duration over the last deployments (oldest left).
async function stepsChart(el, deployments) {
  const last = deployments.slice(0, 50).reverse();
  const timelines = await Promise.all(last.map((d) => api('GET', `/api/deployments/${enc(d.deployment)}/history`).catch(() => null)));
  const steps = PIPELINE.filter((step) => timelines.some((t) => t && (t.steps || []).some((s) => s.step === step && s.duration_ms !== null)));
  const data = [last.map((_, i) => i + 1)];
  for (const step of steps) {
    data.push(timelines.map((t) => {
      const s = t && (t.steps || []).find((x) => x.step === step);
      return s && s.duration_ms !== null && s.duration_ms !== undefined ? s.duration_ms / 1000 : null;
    }));
  }
  el.dataset.deployments = last.length;
  el.dataset.steps = steps.join(' ');
  xSpan(plot(el, {
    width: Math.min(1100, el.clientWidth || 1100), height: 220,
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [{ label: `deployment (last ${last.length}, oldest first)`, incrs: [1, 2, 5, 10, 20, 50] }, { label: 'seconds', size: 50 }],
    series: [{ label: '#' }, ...steps.map((step, i) => ({ label: STEP_LABEL[step] || step, stroke: STEP_COLORS[i % STEP_COLORS.length], width: 1.5, points: { show: true, size: 5 } }))],
  }, data), 0.5, last.length + 0.5);
}

function historyCard(project, env) {
  const timeline = h('div', { id: 'chart-timeline', class: 'chart' });
  const steps = h('div', { id: 'chart-steps', class: 'chart' });
  const card = h('div', { class: 'card' }, h('h3', {}, 'Deployments over time'), timeline, h('h3', { class: 'spaced' }, 'Step durations, last 50 deployments'), steps);
  // Drawn again when a deployment this page follows ends.
  card.refresh = () => api('GET', `/api/projects/${enc(project)}/environments/${enc(env)}/deployments?limit=50`).then(async (list) => {
    if (!list.length) { timeline.textContent = 'No deployment yet.'; steps.textContent = ''; return; }
    timelineChart(timeline, list);
    await stepsChart(steps, list);
    card.dataset.drawn = 'true';
  }, (e) => notice(e.message));
  card.refresh();
  return card;
}

// ---- routing -----------------------------------------------------------------

async function route() {
  stopStreams();
  notice('');
  // Each route draws into a container of its own: a slower earlier route
  // (signing in redraws while the hash changes) finishes into a detached
  // one instead of over the current view.
  const view = h('div', { class: 'route' });
  $('view').replaceChildren(view);
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === 'env' && parts.length === 3) await environmentView(view, parts[1], parts[2]);
    else if (parts[0] === 'deployment' && parts[1]) await deploymentView(view, parts[1], parts[2] === 'timeline' ? 'timeline' : 'progress');
    else if (parts[0] === 'projects') await projectsView(view);
    else await environmentsView(view);
  } catch (e) {
    view.replaceChildren(h('div', { class: 'card empty' }, e.status === 401 ? 'Sign in to see this Slipway.' : e.message));
  }
}

// Running steps' durations tick without a redraw.
setInterval(() => {
  for (const el of document.querySelectorAll('[data-since]')) {
    el.textContent = duration(new Date() - new Date(el.dataset.since));
  }
}, 1000);

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', signIn);
  $('login-cancel').addEventListener('click', () => { $('login').hidden = true; });
  window.addEventListener('hashchange', route);
  await loadIdentity();
  if (!app.who && !app.token) showLogin('');
  await route();
});
