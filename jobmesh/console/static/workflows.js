// Workflows: the definitions this node can start (with a start form), the instances
// (newest first, with abort), and one instance's step history at #/workflows/<id>.
// A node without workflows answers 404/501: the view says so instead of failing.
import {ApiError, pathOf} from './api.js';
import {h, replace, empty, clockTime, relative, shortId, stateBadge, throttle} from './dom.js';

const POLL_MS = 3000;
const LIMIT = 100;
const WF_STATES = ['RUNNING', 'COMPLETED', 'FAILED', 'ABORTED'];

function wfBadge(state) {
  const cls = {RUNNING: 'active', COMPLETED: 'succeeded', FAILED: 'given_up', ABORTED: 'stopped'}[state] || 'queued';
  return h('span', {class: `state state-${cls}`, 'data-wf-state': state}, state);
}

function stepText(w) {
  const n = w.steps || 0;
  return `${Math.min((w.current_step || 0) + 1, n)}/${n} ${w.current_topic || ''}`;
}

export class WorkflowsView {
  constructor(ctx) {
    this.ctx = ctx;
    this.selected = null;
    this.stateFilter = '';
    this.refreshSoon = throttle(() => this.refresh(), 700);
  }

  mount(el, params = []) {
    this.note = h('div', {class: 'empty', id: 'workflows-unavailable', hidden: true});
    this.defsBody = h('tbody');
    this.body = h('tbody');
    this.detail = h('div', {id: 'workflow-detail'});
    const filter = h('select', {'aria-label': 'state', id: 'workflow-state-filter',
      onchange: () => { this.stateFilter = filter.value; this.refresh(); }},
    h('option', {value: ''}, 'all states'), WF_STATES.map((s) => h('option', {value: s}, s)));
    el.append(
      this.note,
      h('section', {class: 'panel', id: 'workflow-definitions'},
        h('header', {class: 'panel-head'}, h('h2', {}, 'Workflow definitions'),
          h('span', {class: 'muted'}, 'each step is a job; a step’s output is the next step’s input')),
        h('div', {class: 'table-wrap'}, h('table', {class: 'table'},
          h('thead', {}, h('tr', {}, ['name', 'steps', 'description', 'start with properties (JSON)', '']
            .map((t) => h('th', {}, t)))),
          this.defsBody))),
      h('section', {class: 'panel'},
        h('header', {class: 'panel-head'}, h('h2', {}, 'Workflow instances'), filter),
        h('div', {class: 'table-wrap'}, h('table', {class: 'table', id: 'workflows-table'},
          h('thead', {}, h('tr', {}, ['id', 'workflow', 'state', 'step', 'started', 'reason', '']
            .map((t) => h('th', {}, t)))),
          this.body))),
      this.detail);
    this.update(params);
    this.refreshDefinitions();
    this.timer = setInterval(() => this.refresh(), POLL_MS);
  }

  unmount() { clearInterval(this.timer); }

  update(params = []) {
    this.selected = params[0] || null;
    this.refresh();
  }

  onEvent(n) {
    // step jobs ending move workflows on
    if (['job/finished', 'job/cancelled', 'job/stopped', 'job/removed', 'job/added'].includes(n.topic)) this.refreshSoon();
  }

  unavailable(err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 501)) {
      this.note.hidden = false;
      this.note.textContent = 'Workflows are not available on this node.';
      return true;
    }
    return false;
  }

  async refreshDefinitions() {
    let data;
    try {
      data = await this.ctx.api('/api/v1/workflow-definitions');
    } catch (err) {
      if (!this.unavailable(err)) {
        replace(this.defsBody, h('tr', {}, h('td', {colspan: 5}, empty(`Could not load the definitions: ${err.message}`))));
      }
      return;
    }
    const defs = (data && data.definitions) || [];
    if (!defs.length) {
      replace(this.defsBody, h('tr', {}, h('td', {colspan: 5},
        empty('No workflows defined (define them in Python or in a --consumers module).'))));
      return;
    }
    replace(this.defsBody, defs.map((d) => {
      const props = h('input', {name: 'properties', placeholder: '{"key": "value"}', spellcheck: 'false',
        'aria-label': `properties for ${d.name}`});
      return h('tr', {'data-definition': d.name},
        h('td', {class: 'mono'}, d.name),
        h('td', {class: 'small'}, d.steps.map((s, i) => [i ? ' → ' : '',
          h('span', {class: 'mono', title: s.offloadable ? 'offloadable' : 'local: runs on this node'},
            s.topic + (s.offloadable ? '' : ' (local)'))])),
        h('td', {class: 'muted small'}, d.description || '–'),
        h('td', {}, props),
        h('td', {class: 'right'}, h('button', {class: 'btn small primary', type: 'button', 'data-action': 'start',
          onclick: () => this.start(d.name, props)}, 'Start')));
    }));
  }

  async start(name, input) {
    const body = {workflow: name};
    if (input.value.trim()) {
      try { body.properties = JSON.parse(input.value); } catch (err) {
        this.ctx.toast(`Properties are not valid JSON: ${err.message}`);
        return;
      }
    }
    try {
      const inst = await this.ctx.api('/api/v1/workflows', {method: 'POST', body});
      this.ctx.toast(`Started ${name}`, 'ok');
      this.ctx.navigate(`#/workflows/${pathOf(inst.id)}`);
    } catch (err) {
      this.ctx.toast(`Could not start ${name}: ${err.message}`);
    }
  }

  async refresh() {
    const q = `?limit=${LIMIT}${this.stateFilter ? `&state=${this.stateFilter}` : ''}`;
    let data;
    try {
      data = await this.ctx.api(`/api/v1/workflows${q}`);
    } catch (err) {
      if (!this.unavailable(err)) {
        replace(this.body, h('tr', {}, h('td', {colspan: 7}, empty(`Could not load the workflows: ${err.message}`))));
      }
      return;
    }
    this.note.hidden = true;
    const items = (data && data.workflows) || [];
    if (!items.length) {
      replace(this.body, h('tr', {}, h('td', {colspan: 7}, empty('No workflow instances.'))));
    } else {
      replace(this.body, items.map((w) => h('tr', {'data-workflow': w.id, class: w.id === this.selected ? 'selected' : ''},
        h('td', {class: 'mono'}, h('a', {href: `#/workflows/${pathOf(w.id)}`}, shortId(w.id))),
        h('td', {class: 'mono'}, w.workflow),
        h('td', {}, wfBadge(w.state)),
        h('td', {class: 'small'}, stepText(w)),
        h('td', {title: w.created || ''}, `${clockTime(w.created)} (${relative(w.created)})`),
        h('td', {class: 'small'}, w.reason || '–'),
        h('td', {class: 'right'}, w.state === 'RUNNING'
          ? h('button', {class: 'btn small danger-outline', type: 'button', 'data-action': 'abort',
            onclick: () => this.abort(w)}, 'Abort') : null))));
    }
    await this.renderDetail();
  }

  async renderDetail() {
    if (!this.selected) { replace(this.detail); return; }
    let w;
    try {
      w = await this.ctx.api(`/api/v1/workflows/${pathOf(this.selected)}`);
    } catch (err) {
      replace(this.detail, h('section', {class: 'panel'}, empty(`Workflow ${this.selected}: ${err.message}`)));
      return;
    }
    replace(this.detail, h('section', {class: 'panel', 'data-workflow-detail': w.id},
      h('header', {class: 'panel-head'}, h('h2', {}, `${w.workflow} `, h('span', {class: 'mono muted'}, w.id)),
        wfBadge(w.state)),
      w.reason ? h('p', {class: 'reason'}, w.reason) : null,
      h('p', {class: 'muted small'}, `origin ${w.origin} · started ${clockTime(w.created)}`,
        w.finished ? ` · finished ${clockTime(w.finished)}` : ''),
      h('div', {class: 'table-wrap'}, h('table', {class: 'table'},
        h('thead', {}, h('tr', {}, ['#', 'topic', 'job', 'state', 'finished', 'message', 'output']
          .map((t) => h('th', {}, t)))),
        h('tbody', {}, (w.history || []).map((s) => h('tr', {'data-step': s.index},
          h('td', {}, s.index + 1),
          h('td', {class: 'mono'}, s.topic),
          h('td', {class: 'mono'}, s.job_id ? h('a', {href: `#/jobs/${pathOf(s.job_id)}`}, shortId(s.job_id)) : '–'),
          h('td', {}, ['PENDING', 'REFUSED'].includes(s.state) ? h('span', {class: 'state state-queued'}, s.state)
            : stateBadge(s.state)),
          h('td', {}, clockTime(s.finished)),
          h('td', {class: 'small'}, s.result_message || '–'),
          h('td', {class: 'mono small'}, s.output ? JSON.stringify(s.output) : '–')))))),
      h('h3', {}, 'Data (input of the next step)'),
      h('pre', {class: 'mono small'}, JSON.stringify(w.data, null, 2))));
  }

  async abort(w) {
    try {
      await this.ctx.api(`/api/v1/workflows/${pathOf(w.id)}/abort`, {method: 'POST'});
      this.ctx.toast(`Workflow ${shortId(w.id)} aborted`, 'ok');
    } catch (err) {
      this.ctx.toast(`Could not abort: ${err.message}`);
    }
    this.refresh();
  }
}
