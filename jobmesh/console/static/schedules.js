// Schedules: scheduled jobs (at a time, every N seconds, cron, hourly/daily/weekly),
// fired once per topology by the leader. A node without the scheduler answers 404.
import {ApiError, pathOf} from './api.js';
import {h, replace, empty, clockTime, relative, throttle} from './dom.js';

const POLL_MS = 5000;
const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const pad = (n) => String(n).padStart(2, '0');

export class SchedulesView {
  constructor(ctx) {
    this.ctx = ctx;
    this.refreshSoon = throttle(() => this.refresh(), 1000);
  }

  mount(el) {
    this.body = h('tbody');
    this.note = h('div', {class: 'empty', id: 'schedules-unavailable', hidden: true});
    this.form = this.buildForm();
    el.append(h('section', {class: 'panel'},
      h('header', {class: 'panel-head'}, h('h2', {}, 'Schedules'),
        h('span', {class: 'muted'}, 'only the leader fires: one job per firing in the whole topology')),
      this.note,
      this.form,
      h('div', {class: 'table-wrap'},
        h('table', {class: 'table', id: 'schedules-table'},
          h('thead', {}, h('tr', {},
            ['topic', 'when', 'next', 'last fired', 'properties', 'id', ''].map((t) => h('th', {}, t)))),
          this.body))));
    this.refresh();
    this.timer = setInterval(() => this.refresh(), POLL_MS);
  }

  unmount() { clearInterval(this.timer); }

  onEvent(n) {
    if (n.topic === 'job/added') this.refreshSoon();  // a firing shows up as "last fired"
  }

  buildForm() {
    const topic = h('input', {name: 'topic', placeholder: 'topic', required: true});
    const props = h('input', {name: 'properties', placeholder: '{"key": "value"}', spellcheck: 'false'});
    const kind = h('select', {name: 'kind', 'aria-label': 'kind'},
      [['every', 'every N seconds'], ['cron', 'cron (UTC)'], ['at', 'once at'], ['hourly', 'hourly'],
        ['daily', 'daily'], ['weekly', 'weekly']].map(([v, t]) => h('option', {value: v}, t)));
    const inputs = {
      every: h('input', {name: 'every', type: 'number', min: '0.1', step: 'any', value: '60', 'aria-label': 'seconds'}),
      cron: h('input', {name: 'cron', placeholder: '*/5 * * * *', 'aria-label': 'cron expression'}),
      at: h('input', {name: 'at', type: 'datetime-local', step: '1', 'aria-label': 'time (local)'}),
      hourly: h('input', {name: 'minute', type: 'number', min: 0, max: 59, value: 0, 'aria-label': 'minute'}),
      daily: h('input', {name: 'time', type: 'time', value: '08:00', 'aria-label': 'time (UTC)'}),
      weekly: h('span', {class: 'pair'},
        h('select', {name: 'weekday', 'aria-label': 'weekday'}, WEEKDAYS.map((d) => h('option', {value: d}, d))),
        h('input', {name: 'wtime', type: 'time', value: '08:00', 'aria-label': 'time (UTC)'})),
    };
    const hints = {every: 'seconds', cron: 'UTC', at: 'local time', hourly: 'minute', daily: 'UTC', weekly: 'UTC'};
    const hint = h('span', {class: 'muted small'});
    const when = h('span', {class: 'when'}, Object.values(inputs), hint);
    const show = () => {
      for (const [k, input] of Object.entries(inputs)) input.hidden = k !== kind.value;
      hint.textContent = hints[kind.value];
    };
    kind.addEventListener('change', show);
    show();

    const form = h('form', {class: 'inline-form', id: 'schedule-form',
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {topic: topic.value.trim()};
        if (props.value.trim()) {
          try { body.properties = JSON.parse(props.value); } catch (err) {
            this.ctx.toast(`Properties are not valid JSON: ${err.message}`);
            return;
          }
        }
        const k = kind.value;
        try {
          body[k] = whenValue(k, inputs[k]);
        } catch (err) {
          this.ctx.toast(err.message);
          return;
        }
        try {
          const schedule = await this.ctx.api('/api/v1/schedules', {method: 'POST', body});
          this.ctx.toast(`Scheduled ${schedule.topic || body.topic}`, 'ok');
          this.refresh();
        } catch (err) {
          this.ctx.toast(`Could not add the schedule: ${err.message}`);
        }
      }},
    h('label', {}, 'Topic', topic),
    h('label', {}, 'Properties (JSON)', props),
    h('label', {}, 'When', h('span', {class: 'pair'}, kind, when)),
    h('button', {class: 'btn primary', type: 'submit'}, 'Add schedule'));
    return form;
  }

  async refresh() {
    let data;
    try {
      data = await this.ctx.api('/api/v1/schedules');
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 501)) {
        this.note.hidden = false;
        this.note.textContent = 'The scheduler is not available on this node.';
        this.form.hidden = true;
        replace(this.body);
        return;
      }
      replace(this.body, h('tr', {}, h('td', {colspan: 7}, empty(`Could not load the schedules: ${err.message}`))));
      return;
    }
    this.note.hidden = true;
    this.form.hidden = false;
    const schedules = Array.isArray(data) ? data : (data && data.schedules) || [];
    if (!schedules.length) {
      replace(this.body, h('tr', {}, h('td', {colspan: 7}, empty('No schedules.'))));
      return;
    }
    replace(this.body, schedules.map((s) => h('tr', {'data-schedule': s.id, class: s.suspended ? 'suspended' : ''},
      h('td', {class: 'mono'}, s.topic),
      h('td', {}, describe(s), s.suspended ? h('span', {class: 'tag tag-warn'}, 'suspended') : null),
      h('td', {title: s.next_fire || ''}, s.next_fire ? `${clockTime(s.next_fire)} (${relative(s.next_fire)})` : '–'),
      h('td', {title: s.last_fired || ''}, clockTime(s.last_fired)),
      h('td', {class: 'mono small'}, Object.keys(s.properties || {}).length ? JSON.stringify(s.properties) : '–'),
      h('td', {class: 'mono muted small', title: s.id}, String(s.id).slice(0, 10)),
      h('td', {class: 'right nowrap'},
        h('button', {class: 'btn small', type: 'button', 'data-action': s.suspended ? 'resume' : 'suspend',
          onclick: () => this.act(s, s.suspended ? 'resume' : 'suspend')}, s.suspended ? 'Resume' : 'Suspend'),
        h('button', {class: 'btn small danger-outline', type: 'button', 'data-action': 'remove',
          onclick: () => this.act(s, 'remove')}, 'Remove')))));
  }

  async act(schedule, action) {
    const path = `/api/v1/schedules/${pathOf(schedule.id)}`;
    try {
      if (action === 'remove') await this.ctx.api(path, {method: 'DELETE'});
      else await this.ctx.api(`${path}/${action}`, {method: 'POST'});
      this.ctx.toast(`Schedule ${{remove: 'removed', suspend: 'suspended', resume: 'resumed'}[action]}`, 'ok');
    } catch (err) {
      this.ctx.toast(`Could not ${action} the schedule: ${err.message}`);
    }
    this.refresh();
  }
}

/** The POST body's value for a schedule form (DESIGN §5.2), from the form's inputs. */
function whenValue(kind, input) {
  if (kind === 'every') {
    const seconds = Number(input.value);
    if (!(seconds > 0)) throw new Error('Every: give a number of seconds above 0.');
    return seconds;
  }
  if (kind === 'cron') {
    if (!input.value.trim()) throw new Error('Cron: give an expression, e.g. */5 * * * *');
    return input.value.trim();
  }
  if (kind === 'at') {
    const t = Date.parse(input.value);
    if (Number.isNaN(t)) throw new Error('Once at: pick a date and time.');
    return new Date(t).toISOString();
  }
  if (kind === 'hourly') return {minute: Number(input.value) || 0};
  const timeInput = kind === 'weekly' ? input.querySelector('input') : input;
  const [hour, minute] = (timeInput.value || '00:00').split(':').map(Number);
  if (kind === 'daily') return {hour, minute};
  return {weekday: input.querySelector('select').value, hour, minute};
}

function describe(s) {
  const kind = s.kind || ['at', 'every', 'cron', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'].find((k) => k in s);
  const w = s[kind];
  switch (kind) {
    case 'every': return `every ${w} s`;
    case 'cron': return `cron ${w}`;
    case 'at': return `once at ${clockTime(w)}`;
    case 'hourly': return `hourly at :${pad(w.minute)}`;
    case 'daily': return `daily at ${pad(w.hour)}:${pad(w.minute)} UTC`;
    case 'weekly': return `weekly, ${w.weekday} ${pad(w.hour)}:${pad(w.minute)} UTC`;
    default: return `${kind} ${JSON.stringify(w)}`;
  }
}
