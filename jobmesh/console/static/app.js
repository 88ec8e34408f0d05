// jobmesh console: boot, routing between views, the live counters and event stream.
import {api, ApiError, EventStream, getToken, setToken, setTokenPrompt, onTokenChange} from './api.js';
import {h, ms, num, replace, throttle} from './dom.js';
import {OverviewView} from './overview.js';
import {JobsView} from './jobs.js';
import {QueuesView} from './queues.js';
import {SchedulesView} from './schedules.js';
import {OffloadingView} from './offloading.js';
import {WorkflowsView} from './workflows.js';

const TOPOLOGY_POLL_MS = 3000;
const STATS_POLL_MS = 5000;
const ACTIVITY_KEEP = 80;

const VIEWS = {
  overview: OverviewView,
  jobs: JobsView,
  queues: QueuesView,
  schedules: SchedulesView,
  offloading: OffloadingView,
  workflows: WorkflowsView,
};

/** What every view may use: the API, the latest topology, notifications, toasts. */
const ctx = {
  api,
  topology: null,
  stats: null,             // the latest /api/v1/stats
  activity: [],            // newest first, bounded
  toast,
  navigate(hash) { if (location.hash !== hash) location.hash = hash; else route(); },
};

let current = null;        // {name, view}

function toast(message, kind = 'error') {
  const el = h('div', {class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status'}, message);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.classList.add('leaving'), kind === 'error' ? 6000 : 2500);
  setTimeout(() => el.remove(), kind === 'error' ? 6500 : 3000);
}

function banner(message) {
  const el = document.getElementById('banner');
  el.hidden = !message;
  el.textContent = message || '';
}

// --- routing ----------------------------------------------------------------

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const name = VIEWS[parts[0]] ? parts[0] : 'overview';
  return {name, params: parts.slice(1)};
}

function route() {
  const {name, params} = parseHash();
  for (const a of document.querySelectorAll('.tabs a')) {
    a.classList.toggle('active', a.dataset.tab === name);
  }
  if (current && current.name === name && current.view.update) {
    current.view.update(params);
    return;
  }
  if (current) current.view.unmount?.();
  const container = document.getElementById('view');
  container.replaceChildren();
  container.dataset.view = name;
  const view = new VIEWS[name](ctx);
  current = {name, view};
  view.mount(container, params);
}

// --- live data ----------------------------------------------------------------

async function refreshTopology() {
  try {
    const topology = await api('/api/v1/topology');
    ctx.topology = topology;
    renderNodeChip(topology);
    banner(topology.current === false ? 'The topology is changing: a node is joining or leaving.' : '');
    current?.view.onTopology?.(topology);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    banner(`Topology unavailable: ${err.message}`);
  }
}

function renderNodeChip(topology) {
  const chip = document.getElementById('node-chip');
  const local = topology.local || chip.textContent;
  const isLeader = topology.leader && topology.leader === local;
  const count = (topology.instances || []).length;
  replace(chip,
    h('b', {}, local),
    isLeader ? h('span', {class: 'tag tag-leader'}, 'leader') : null,
    h('span', {class: 'muted'}, ` · ${count} node${count === 1 ? '' : 's'}`),
  );
}

const previousStats = {};
async function refreshStats() {
  let stats;
  try {
    stats = await api('/api/v1/stats');
  } catch (err) {
    return;  // the counters keep their last values; the topology banner tells about outages
  }
  ctx.stats = stats;
  const overall = (stats && (stats.overall || stats)) || {};
  for (const el of document.querySelectorAll('#counters .counter')) {
    const key = el.dataset.stat;
    const value = overall[key];
    const text = key.startsWith('average_') ? ms(value) : num(value);
    const b = el.querySelector('b');
    if (b.textContent !== text) {
      b.textContent = text;
      if (previousStats[key] !== undefined) {
        el.classList.remove('bump');
        void el.offsetWidth;  // restart the animation
        el.classList.add('bump');
      }
      previousStats[key] = text;
    }
  }
  current?.view.onStats?.(stats);
}
const refreshStatsSoon = throttle(refreshStats, 400);
const refreshTopologySoon = throttle(refreshTopology, 1000);  // load per node moves with jobs

function setLiveStatus(status) {
  const el = document.getElementById('live');
  el.dataset.status = status;
  el.querySelector('span').textContent = {live: 'live', connecting: 'connecting', offline: 'offline'}[status] || status;
  if (status !== 'live') refreshTopologySoon();  // find out at once whether the node is gone
}

function onNotification(n) {
  ctx.activity.unshift({...n, received: Date.now()});
  if (ctx.activity.length > ACTIVITY_KEEP) ctx.activity.length = ACTIVITY_KEEP;
  refreshStatsSoon();
  if (n.topic === 'job/started' || n.topic === 'job/finished') refreshTopologySoon();
  current?.view.onEvent?.(n);
}

// --- token ------------------------------------------------------------------

function showTokenDialog(rejected) {
  const dialog = document.getElementById('token-dialog');
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  const error = document.getElementById('token-error');
  error.hidden = !rejected;
  error.textContent = rejected ? 'That token was refused (401). Try again.' : '';
  input.value = '';
  return new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      form.removeEventListener('submit', submit);
      dialog.close();
      setToken(token);
      resolve(token);
    };
    form.addEventListener('submit', submit);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

// --- boot ---------------------------------------------------------------------

function boot() {
  setTokenPrompt(showTokenDialog);
  // Escape would leave the console without access to anything: the dialog stays.
  document.getElementById('token-dialog').addEventListener('cancel', (event) => event.preventDefault());
  const stream = new EventStream({onEvent: onNotification, onStatus: setLiveStatus});
  const tokenButton = document.getElementById('token-btn');
  tokenButton.hidden = !getToken();
  tokenButton.addEventListener('click', () => {
    setToken('');
    location.reload();
  });
  onTokenChange((token) => {
    tokenButton.hidden = !token;
    stream.connect();  // EventSource carries the token in its URL: reopen with the new one
    refreshTopology();
    refreshStats();
  });

  window.addEventListener('hashchange', route);
  route();
  // The first call asks for the token if the node needs one; the stream opens after it
  // so that it does not start with a refused connection.
  refreshTopology().finally(() => {
    if (!stream.source) stream.connect();
    refreshStats();
  });
  // Polls pause while the tab is hidden; the event stream keeps the counters honest.
  setInterval(() => { if (!document.hidden) refreshTopology(); }, TOPOLOGY_POLL_MS);
  setInterval(() => { if (!document.hidden) refreshStats(); }, STATS_POLL_MS);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) { refreshTopology(); refreshStats(); }
  });
  window.jobmeshConsole = ctx;  // handy in the browser's devtools
}

boot();
