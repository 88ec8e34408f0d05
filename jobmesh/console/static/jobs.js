// Jobs: Sling's job console. A filtered list, and a job panel with properties,
// progress, log and result, and the stop / retry / remove actions.
import {ApiError, download, pathOf} from './api.js';
import {h, replace, stateBadge, shortId, clockTime, relative, humanSeconds, parseTime,
  empty, throttle, debounce, STATES, FINAL_STATES} from './dom.js';

const PANEL_POLL_MS = 1000;   // progress and log lines are not notifications: poll a live job
const LIST_POLL_MS = 5000;

// Filters survive switching tabs (not reloads).
const filters = {state: '', topic: '', limit: 100};

/** Preset the list's filters (e.g. from a topic link elsewhere) before opening #/jobs. */
export function setJobFilters(values) {
  Object.assign(filters, values);
}

export class JobsView {
  constructor(ctx) {
    this.ctx = ctx;
    this.jobId = null;
    this.job = null;
    this.timers = [];
    this.refreshListSoon = throttle(() => this.refreshList(), 500);
    this.refreshPanelSoon = throttle(() => this.refreshPanel(), 250);
  }

  mount(el, params) {
    const stateSelect = h('select', {id: 'filter-state', 'aria-label': 'state',
      onchange: (e) => { filters.state = e.target.value; this.refreshList(); }},
    h('option', {value: ''}, 'all states'),
    STATES.map((s) => h('option', {value: s}, s.replace('_', ' '))));
    stateSelect.value = filters.state;
    const topicInput = h('input', {id: 'filter-topic', type: 'search', placeholder: 'topic, e.g. media/render',
      value: filters.topic, 'aria-label': 'topic',
      oninput: debounce((e) => { filters.topic = e.target.value.trim(); this.refreshList(); }, 300)});
    const limitSelect = h('select', {id: 'filter-limit', 'aria-label': 'limit',
      onchange: (e) => { filters.limit = Number(e.target.value); this.refreshList(); }},
    [50, 100, 500].map((n) => h('option', {value: n}, `${n} newest`)));
    limitSelect.value = String(filters.limit);

    this.tbody = h('tbody');
    this.count = h('span', {class: 'muted'});
    this.panel = h('aside', {class: 'job-panel', id: 'job-panel', hidden: true});
    this.submitForm = this.buildSubmitForm();
    el.append(
      h('div', {class: 'jobs-layout'},
        h('section', {class: 'panel grow'},
          h('header', {class: 'panel-head'},
            h('h2', {}, 'Jobs'), this.count,
            h('div', {class: 'filters'}, stateSelect, topicInput, limitSelect,
              h('button', {class: 'btn', type: 'button', id: 'new-job-btn',
                onclick: () => { this.submitForm.hidden = !this.submitForm.hidden; }}, 'New job'))),
          this.submitForm,
          h('div', {class: 'table-wrap'},
            h('table', {class: 'table jobs-table', id: 'jobs-table'},
              h('thead', {}, h('tr', {},
                h('th', {}, 'state'), h('th', {}, 'topic'), h('th', {}, 'id'), h('th', {}, 'queue'),
                h('th', {}, 'origin → target'), h('th', {}, 'created'), h('th', {}, 'progress'))),
              this.tbody))),
        this.panel));
    this.refreshList();
    this.timers.push(setInterval(() => this.refreshList(), LIST_POLL_MS));
    this.timers.push(setInterval(() => {
      if (this.jobId && (!this.job || !FINAL_STATES.has(this.job.state))) this.refreshPanel();
    }, PANEL_POLL_MS));
    this.update(params);
  }

  unmount() {
    this.timers.forEach(clearInterval);
  }

  update(params) {
    const id = params[0] || null;
    if (id !== this.jobId) {
      this.jobId = id;
      this.job = null;
      this.confirmingRemove = false;
      this.panel.hidden = !id;
      if (id) {
        replace(this.panel, empty('Loading the job…'));
        this.refreshPanel();
      }
      this.markSelected();
    }
  }

  onEvent(n) {
    this.refreshListSoon();
    if (this.jobId && n.job_id === this.jobId) this.refreshPanelSoon();
  }

  buildSubmitForm() {
    const topic = h('input', {name: 'topic', placeholder: 'topic', required: true});
    const props = h('textarea', {name: 'properties', rows: 2, placeholder: '{"key": "value"}', spellcheck: 'false'});
    const form = h('form', {class: 'inline-form', id: 'new-job-form', hidden: true,
      onsubmit: async (e) => {
        e.preventDefault();
        let properties = {};
        if (props.value.trim()) {
          try { properties = JSON.parse(props.value); } catch (err) {
            this.ctx.toast(`Properties are not valid JSON: ${err.message}`);
            return;
          }
        }
        try {
          const job = await this.ctx.api('/api/v1/jobs', {method: 'POST', body: {topic: topic.value.trim(), properties}});
          this.ctx.toast(`Added ${job.topic} (${shortId(job.id)})`, 'ok');
          form.hidden = true;
          this.refreshList();
        } catch (err) {
          this.ctx.toast(`Could not add the job: ${err.message}`);
        }
      }},
    h('label', {}, 'Topic', topic),
    h('label', {class: 'grow'}, 'Properties (JSON)', props),
    h('button', {class: 'btn primary', type: 'submit'}, 'Add job'));
    return form;
  }

  async refreshList() {
    const q = new URLSearchParams();
    if (filters.state) q.set('state', filters.state);
    if (filters.topic) q.set('topic', filters.topic);
    q.set('limit', String(filters.limit));
    let data;
    try {
      data = await this.ctx.api(`/api/v1/jobs?${q}`);
    } catch (err) {
      replace(this.tbody, h('tr', {}, h('td', {colspan: 7}, empty(`Could not load jobs: ${err.message}`))));
      return;
    }
    const jobs = (data && data.jobs) || [];
    replace(this.count, `${jobs.length}${jobs.length >= filters.limit ? '+' : ''} shown`);
    if (!jobs.length) {
      replace(this.tbody, h('tr', {}, h('td', {colspan: 7},
        empty(filters.state || filters.topic ? 'No job matches these filters.' : 'No jobs yet.'))));
      return;
    }
    replace(this.tbody, jobs.map((job) => this.row(job)));
    this.markSelected();
  }

  row(job) {
    return h('tr', {class: 'clickable', 'data-job': job.id,
      onclick: () => this.ctx.navigate(`#/jobs/${pathOf(job.id)}`)},
    h('td', {}, stateBadge(job.state)),
    h('td', {class: 'mono'}, job.topic),
    h('td', {class: 'mono', title: job.id},
      h('a', {href: `#/jobs/${pathOf(job.id)}`, onclick: (e) => e.stopPropagation()}, shortId(job.id))),
    h('td', {}, job.queue || '–'),
    h('td', {}, job.origin || '–', job.target && job.target !== job.origin ? h('span', {class: 'muted'}, ` → ${job.target}`) : null),
    h('td', {title: job.created || ''}, clockTime(job.created)),
    h('td', {}, progressBar(job, true)));
  }

  markSelected() {
    for (const tr of this.tbody.querySelectorAll('tr[data-job]')) {
      tr.classList.toggle('selected', tr.dataset.job === this.jobId);
    }
  }

  async refreshPanel() {
    const id = this.jobId;
    if (!id) return;
    let job;
    try {
      job = await this.ctx.api(`/api/v1/jobs/${pathOf(id)}`);
    } catch (err) {
      if (id !== this.jobId) return;
      this.job = null;
      replace(this.panel, this.panelHead(null),
        empty(err instanceof ApiError && err.status === 404
          ? 'This job does not exist (any more): removed, or past its history period.'
          : `Could not load the job: ${err.message}`));
      return;
    }
    if (id !== this.jobId) return;  // the user moved on meanwhile
    this.job = job;
    this.renderPanel(job);
  }

  panelHead(job) {
    return h('header', {class: 'panel-head'},
      h('h2', {class: 'mono'}, job ? job.topic : 'Job'),
      job ? stateBadge(job.state) : null,
      h('button', {class: 'icon-btn close', type: 'button', title: 'close', 'aria-label': 'close',
        onclick: () => this.ctx.navigate('#/jobs')}, '×'));
  }

  renderPanel(job) {
    // rebuilt on every refresh (a live job's: every PANEL_POLL_MS, and on each of its
    // notifications); `replace` keeps the buttons that stay the same, so a click whose press
    // and release straddle a rebuild still lands
    this.renderPanelBody(job, this.renderActions(job, FINAL_STATES.has(job.state)));
  }

  renderActions(job, final) {
    return h('div', {class: 'actions'},
      h('button', {class: 'btn', type: 'button', id: 'job-stop', disabled: final,
        title: 'stop a queued job, or ask a running consumer to stop',
        onclick: () => this.act('stop')}, 'Stop'),
      h('button', {class: 'btn', type: 'button', id: 'job-retry', disabled: !final || job.state === 'SUCCEEDED',
        title: 'put a failed, stopped or dropped job back in its queue',
        onclick: () => this.act('retry')}, 'Retry'),
      this.confirmingRemove
        ? h('button', {class: 'btn danger', type: 'button', id: 'job-remove-confirm',
          onclick: () => this.act('remove')}, final ? 'Delete for good?' : 'Drop it?')
        : h('button', {class: 'btn danger-outline', type: 'button', id: 'job-remove',
          title: final ? 'delete this finished job' : 'stop it and record it DROPPED',
          onclick: () => { this.confirmingRemove = true; this.renderPanel(this.job || job); }}, 'Remove'));
  }

  renderPanelBody(job, actions) {
    const progress = job.progress || {};
    const log = progress.log || [];
    const before = [this.panelHead(job), h('div', {class: 'job-id mono', title: 'job id'}, job.id)];
    const after = [
      h('section', {class: 'job-section'},
        h('h3', {}, 'Progress'), progressBar(job, false),
        h('div', {class: 'muted small'}, progressText(job))),
      job.result_message ? h('section', {class: 'job-section'},
        h('h3', {}, 'Result'), h('p', {class: 'result-message', id: 'job-result'}, job.result_message)) : null,
      job.result !== null && job.result !== undefined ? h('section', {class: 'job-section'},
        h('h3', {}, 'Return value'),
        h('pre', {class: 'code', id: 'job-return'}, JSON.stringify(job.result, null, 2))) : null,
      this.payloadSection(job),
      h('section', {class: 'job-section'},
        h('dl', {class: 'kv wide'},
          h('dt', {}, 'queue'), h('dd', {}, job.queue || '–'),
          h('dt', {}, 'origin'), h('dd', {}, job.origin || '–'),
          h('dt', {}, 'target'), h('dd', {}, job.target || '–'),
          h('dt', {}, 'created'), h('dd', {title: job.created || ''}, `${clockTime(job.created)} (${relative(job.created)})`),
          h('dt', {}, 'started'), h('dd', {title: job.started || ''}, clockTime(job.started)),
          h('dt', {}, 'finished'), h('dd', {title: job.finished || ''}, clockTime(job.finished)),
          h('dt', {}, 'duration'), h('dd', {}, duration(job)),
          h('dt', {}, 'retries'), h('dd', {}, `${job.retry_count ?? 0} of ${job.max_retries === -1 ? '∞' : job.max_retries ?? '–'}`))),
      h('section', {class: 'job-section'},
        h('h3', {}, 'Properties'),
        h('pre', {class: 'code', id: 'job-properties'}, JSON.stringify(job.properties ?? {}, null, 2))),
      h('section', {class: 'job-section'},
        h('h3', {}, `Log (${log.length})`),
        log.length ? h('pre', {class: 'code log', id: 'job-log'}, log.join('\n')) : h('div', {class: 'muted small'}, 'No log lines.')),
    ].filter((el) => el);
    replace(this.panel, ...before, actions, ...after);
    const logEl = this.panel.querySelector('.log');
    if (logEl) logEl.scrollTop = logEl.scrollHeight;
  }

  /** The job's input and output payload by name, each with its size and a download button. */
  payloadSection(job) {
    const rows = [];
    for (const [kind, refs] of [['input', job.payload || {}], ['output', job.output_payload || {}]]) {
      for (const [name, ref] of Object.entries(refs)) {
        rows.push(h('tr', {'data-payload': `${kind}:${name}`},
          h('td', {}, kind), h('td', {class: 'mono'}, name), h('td', {class: 'num'}, humanBytes(ref.size)),
          h('td', {class: 'mono muted small', title: ref.id}, shortId(String(ref.id).replace(/^sha256:/, ''))),
          h('td', {}, h('button', {class: 'btn small', type: 'button', title: `download ${name}`,
            onclick: () => this.save(job.id, name)}, 'Download'))));
      }
    }
    if (!rows.length) return null;
    return h('section', {class: 'job-section'},
      h('h3', {}, `Payload (${rows.length})`),
      h('table', {class: 'table compact', id: 'job-payload'},
        h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'name'), h('th', {}, 'size'),
          h('th', {}, 'blob'), h('th', {}, ''))),
        h('tbody', {}, ...rows)));
  }

  async save(jobId, name) {
    try {
      await download(`/api/v1/jobs/${pathOf(jobId)}/payload/${encodeURIComponent(name)}`, name);
    } catch (err) {
      this.ctx.toast(`Could not download ${name}: ${err.message}`);
    }
  }

  async act(action) {
    const id = this.jobId;
    const request = {
      stop: [`/api/v1/jobs/${pathOf(id)}/stop`, 'POST'],
      retry: [`/api/v1/jobs/${pathOf(id)}/retry`, 'POST'],
      remove: [`/api/v1/jobs/${pathOf(id)}`, 'DELETE'],
    }[action];
    this.confirmingRemove = false;
    try {
      const job = await this.ctx.api(request[0], {method: request[1]});
      if (action === 'remove' && !(job && job.state)) {
        this.ctx.toast('Job deleted', 'ok');
        this.ctx.navigate('#/jobs');
      } else {
        this.ctx.toast(`${{stop: 'Stop requested', retry: 'Queued again', remove: 'Dropped'}[action]}`, 'ok');
        if (job && job.id === this.jobId) { this.job = job; this.renderPanel(job); }
      }
    } catch (err) {
      this.ctx.toast(`Could not ${action} the job: ${err.message}`);
      if (this.job) this.renderPanel(this.job);
    }
    this.refreshList();
  }
}

function progressBar(job, compact) {
  const p = job.progress || {};
  const steps = Number(p.steps) || 0;
  let fraction = steps > 0 ? Math.min(1, (Number(p.step) || 0) / steps) : null;
  if (job.state === 'SUCCEEDED') fraction = 1;
  const cls = `bar progress state-bar-${String(job.state).toLowerCase()}${fraction === null && job.state === 'ACTIVE' ? ' indeterminate' : ''}`;
  const bar = h('div', {class: cls, role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-valuenow': fraction === null ? undefined : Math.round(fraction * 100)},
  h('i', {style: {width: `${fraction === null ? (job.state === 'ACTIVE' ? 100 : 0) : fraction * 100}%`}}));
  if (compact) return bar;
  return h('div', {class: 'progress-wrap'}, bar,
    h('span', {class: 'progress-pct'}, fraction === null ? '' : `${Math.round(fraction * 100)} %`));
}

function progressText(job) {
  const p = job.progress || {};
  const parts = [];
  if (p.steps) parts.push(`step ${p.step ?? 0} of ${p.steps}`);
  if (p.eta && !FINAL_STATES.has(job.state)) parts.push(`ETA ${clockTime(p.eta)} (${relative(p.eta)})`);
  if (!parts.length) parts.push(job.state === 'ACTIVE' ? 'running (no steps reported)' : job.state === 'QUEUED' ? 'waiting in its queue' : 'no progress reported');
  return parts.join(' · ');
}

function duration(job) {
  const start = parseTime(job.started);
  if (start === null) return '–';
  const end = parseTime(job.finished) ?? Date.now();
  return humanSeconds(Math.max(0, end - start) / 1000);
}

function humanBytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n);
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
  return i === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
}
