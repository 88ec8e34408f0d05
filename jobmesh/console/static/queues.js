// Queues: each queue's configuration and Sling statistics, suspend / resume,
// and the statistics per topic.
import {pathOf} from './api.js';
import {h, replace, num, ms, empty, throttle, clockTime} from './dom.js';

const POLL_MS = 3000;

export class QueuesView {
  constructor(ctx) {
    this.ctx = ctx;
    this.refreshSoon = throttle(() => this.refresh(), 500);
  }

  mount(el) {
    this.queuesBody = h('tbody');
    this.topicsBody = h('tbody');
    el.append(
      h('section', {class: 'panel'},
        h('header', {class: 'panel-head'}, h('h2', {}, 'Queues'),
          h('span', {class: 'muted'}, 'suspend: running jobs finish, nothing new starts')),
        h('div', {class: 'table-wrap'},
          h('table', {class: 'table', id: 'queues-table'},
            h('thead', {}, h('tr', {},
              ['queue', 'type', 'topics', 'parallel', 'retries', 'queued', 'active', 'succeeded',
                'failed', 'cancelled', 'avg wait', 'avg processing', ''].map((t) => h('th', {}, t)))),
            this.queuesBody))),
      h('section', {class: 'panel'},
        h('header', {class: 'panel-head'}, h('h2', {}, 'Topics'),
          h('span', {class: 'muted'}, 'statistics per job topic on this node')),
        h('div', {class: 'table-wrap'},
          h('table', {class: 'table', id: 'topics-table'},
            h('thead', {}, h('tr', {},
              ['topic', 'queued', 'active', 'succeeded', 'failed', 'cancelled', 'processed',
                'avg wait', 'avg processing', 'last finished'].map((t) => h('th', {}, t)))),
            this.topicsBody))));
    this.refresh();
    this.timer = setInterval(() => this.refresh(), POLL_MS);
  }

  unmount() { clearInterval(this.timer); }

  onEvent() { this.refreshSoon(); }

  onStats(stats) { this.renderTopics(stats); }

  async refresh() {
    try {
      const data = await this.ctx.api('/api/v1/queues');
      const queues = Array.isArray(data) ? data : (data && data.queues) || [];
      this.renderQueues(queues);
    } catch (err) {
      replace(this.queuesBody, h('tr', {}, h('td', {colspan: 13}, empty(`Could not load the queues: ${err.message}`))));
    }
    try {
      this.renderTopics(await this.ctx.api('/api/v1/stats'));
    } catch (err) {
      replace(this.topicsBody, h('tr', {}, h('td', {colspan: 10}, empty(`Could not load the statistics: ${err.message}`))));
    }
  }

  renderQueues(queues) {
    if (!queues.length) {
      replace(this.queuesBody, h('tr', {}, h('td', {colspan: 13}, empty('No queues.'))));
      return;
    }
    replace(this.queuesBody, queues.map((q) => {
      const s = q.statistics || {};
      const suspended = Boolean(q.suspended);
      return h('tr', {'data-queue': q.name, class: suspended ? 'suspended' : ''},
        h('td', {}, h('b', {}, q.name), suspended ? h('span', {class: 'tag tag-warn'}, 'suspended') : null),
        h('td', {}, q.type || '–'),
        h('td', {}, (q.topics || []).length
          ? q.topics.map((t) => h('span', {class: 'chip'}, t))
          : h('span', {class: 'muted'}, q.name === 'main' ? 'every topic no other queue takes' : '–')),
        h('td', {class: 'num'}, num(q.max_parallel)),
        h('td', {class: 'num'}, q.retries === -1 ? '∞' : num(q.retries)),
        h('td', {class: 'num'}, num(s.queued)),
        h('td', {class: 'num'}, num(s.active)),
        h('td', {class: 'num'}, num(s.finished)),
        h('td', {class: 'num'}, num(s.failed)),
        h('td', {class: 'num'}, num(s.cancelled)),
        h('td', {class: 'num'}, ms(s.average_waiting_time)),
        h('td', {class: 'num'}, ms(s.average_processing_time)),
        h('td', {class: 'right'}, h('button', {class: 'btn small', type: 'button',
          'data-action': suspended ? 'resume' : 'suspend',
          onclick: () => this.toggle(q.name, suspended ? 'resume' : 'suspend')},
        suspended ? 'Resume' : 'Suspend')));
    }));
  }

  renderTopics(stats) {
    const topics = Object.entries((stats && stats.topics) || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!topics.length) {
      replace(this.topicsBody, h('tr', {}, h('td', {colspan: 10}, empty('No job has run yet.'))));
      return;
    }
    replace(this.topicsBody, topics.map(([topic, s]) => h('tr', {'data-topic': topic},
      h('td', {class: 'mono'}, topic),
      ['queued', 'active', 'finished', 'failed', 'cancelled', 'processed'].map((k) => h('td', {class: 'num'}, num(s[k]))),
      h('td', {class: 'num'}, ms(s.average_waiting_time)),
      h('td', {class: 'num'}, ms(s.average_processing_time)),
      h('td', {class: 'muted'}, clockTime(s.last_finished)))));
  }

  async toggle(name, action) {
    try {
      await this.ctx.api(`/api/v1/queues/${pathOf(name)}/${action}`, {method: 'POST'});
      this.ctx.toast(`Queue ${name} ${action === 'suspend' ? 'suspended' : 'resumed'}`, 'ok');
    } catch (err) {
      this.ctx.toast(`Could not ${action} queue ${name}: ${err.message}`);
    }
    this.refresh();
  }
}
