// Overview: the topology (Sling Discovery's view: nodes, leader, capacity and load)
// and the live activity feed of job notifications.
import {h, replace, num, ms, shortId, empty, throttle} from './dom.js';
import {pathOf} from './api.js';
import {setJobFilters} from './jobs.js';

const KNOWN_CAPACITY = new Set(['slots', 'active', 'queued', 'throughput']);

export class OverviewView {
  constructor(ctx) {
    this.ctx = ctx;
    // Thousands of notifications a second must not mean thousands of re-renders.
    this.renderFeedSoon = throttle(() => this.renderFeed(), 250);
  }

  mount(el) {
    this.nodes = h('div', {class: 'node-grid', id: 'topology'}, empty('Loading the topology…'));
    this.feed = h('ol', {class: 'feed', id: 'activity'});
    el.append(
      h('section', {class: 'panel'},
        h('header', {class: 'panel-head'}, h('h2', {}, 'Topology'),
          this.summary = h('span', {class: 'muted'}, '')),
        this.nodes),
      h('div', {class: 'columns'},
        h('section', {class: 'panel'},
          h('header', {class: 'panel-head'}, h('h2', {}, 'Activity'),
            h('span', {class: 'muted'}, 'job notifications as they happen')),
          this.feed),
        h('section', {class: 'panel'},
          h('header', {class: 'panel-head'}, h('h2', {}, 'Topics'),
            h('span', {class: 'muted'}, 'on this node')),
          h('div', {class: 'table-wrap'},
            h('table', {class: 'table compact', id: 'overview-topics'},
              h('thead', {}, h('tr', {}, ['topic', 'queued', 'active', 'succeeded', 'failed', 'cancelled', 'avg time']
                .map((t, i) => h('th', {class: i ? 'num' : ''}, t)))),
              this.topicsBody = h('tbody', {}, h('tr', {}, h('td', {colspan: 7}, empty('Loading…')))))))),
    );
    if (this.ctx.topology) this.onTopology(this.ctx.topology);
    if (this.ctx.stats) this.onStats(this.ctx.stats);
    this.renderFeed();
  }

  onTopology(topology) {
    const instances = topology.instances || [];
    replace(this.summary, `${instances.length} node${instances.length === 1 ? '' : 's'} · leader `,
      h('b', {}, topology.leader || '–'));
    if (!instances.length) {
      replace(this.nodes, empty('No node in the topology.'));
      return;
    }
    replace(this.nodes, instances.map((i) => nodeCard(i)));
  }

  onEvent() {
    this.renderFeedSoon();
  }

  onStats(stats) {
    const topics = Object.entries((stats && stats.topics) || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!topics.length) {
      replace(this.topicsBody, h('tr', {}, h('td', {colspan: 7}, empty('No job has run here yet.'))));
      return;
    }
    replace(this.topicsBody, topics.map(([topic, s]) => h('tr', {'data-topic': topic},
      h('td', {class: 'mono'}, h('a', {href: '#/jobs', title: 'show its jobs', onclick: () => setJobFilters({topic, state: ''})}, topic)),
      ['queued', 'active', 'finished', 'failed', 'cancelled'].map((k) => h('td', {class: `num${k === 'cancelled' && s[k] ? ' bad' : ''}`}, num(s[k]))),
      h('td', {class: 'num muted'}, ms(s.average_processing_time)))));
  }

  renderFeed() {
    const items = this.ctx.activity;
    if (!items.length) {
      replace(this.feed, h('li', {class: 'empty'}, 'Waiting for jobs… add one with ',
        h('code', {}, 'jobmesh submit TOPIC'), '.'));
      return;
    }
    replace(this.feed, items.slice(0, 40).map(feedItem));
  }
}

function nodeCard(i) {
  const cap = i.capacity || {};
  const slots = Number(cap.slots) || 0;
  const active = Number(cap.active) || 0;
  const load = slots > 0 ? Math.min(1, active / slots) : 0;
  const offload = new Set(i.offload_topics || []);
  const extra = Object.entries(cap).filter(([k]) => !KNOWN_CAPACITY.has(k));
  return h('article', {class: `node-card${i.local ? ' local' : ''}`, 'data-node': i.name},
    h('header', {},
      h('h3', {}, i.name),
      i.leader ? h('span', {class: 'tag tag-leader'}, 'leader') : null,
      i.local ? h('span', {class: 'tag tag-local'}, 'this node') : null),
    h('div', {class: 'endpoint mono'}, i.endpoint || 'embedded (no transfer endpoint)'),
    h('div', {class: 'load'},
      h('div', {class: 'load-label'},
        h('span', {}, 'load'),
        h('span', {}, slots ? `${active} / ${slots} slots busy` : `${active} active`)),
      h('div', {class: 'bar', title: `${Math.round(load * 100)} %`},
        h('i', {style: {width: `${load * 100}%`}, class: load >= 1 ? 'full' : load > 0.7 ? 'high' : ''}))),
    h('dl', {class: 'kv'},
      h('dt', {}, 'queued'), h('dd', {}, num(cap.queued ?? 0)),
      h('dt', {}, 'throughput'), h('dd', {}, cap.throughput === undefined ? '–' : `${num(cap.throughput)} jobs/s`),
      extra.map(([k, v]) => [h('dt', {}, k.replace(/_/g, ' ')), h('dd', {}, typeof v === 'object' ? JSON.stringify(v) : num(v))])),
    h('div', {class: 'topics'},
      (i.topics || []).length
        ? (i.topics || []).map((t) => h('span', {
          class: `chip${offload.has(t) ? ' chip-on' : ''}`,
          title: offload.has(t) ? 'consumes this topic; takes offloaded jobs' : 'consumes this topic; offloading disabled',
        }, t))
        : h('span', {class: 'muted'}, 'no consumers')),
  );
}

const VERBS = {
  'job/added': 'added', 'job/started': 'started', 'job/finished': 'finished',
  'job/failed': 'failed', 'job/cancelled': 'cancelled', 'job/stopped': 'stopped',
  'job/removed': 'removed',
};

function feedItem(n) {
  const verb = VERBS[n.topic] || n.topic || 'event';
  const time = n.time ? new Date(n.time) : new Date(n.received);
  const timing = n.processing_time !== undefined && n.processing_time !== null
    ? `${num(Math.round(n.processing_time))} ms`
    : n.waiting_time !== undefined && n.waiting_time !== null ? `waited ${num(Math.round(n.waiting_time))} ms` : '';
  return h('li', {class: `feed-item ev-${verb}`},
    h('time', {}, time.toLocaleTimeString([], {hour12: false})),
    h('span', {class: 'verb'}, verb),
    h('span', {class: 'topic mono'}, n.job_topic || ''),
    n.job_id ? h('a', {class: 'mono', href: `#/jobs/${pathOf(n.job_id)}`}, shortId(n.job_id)) : h('span'),
    h('span', {class: 'muted'}, n.node || ''),
    h('span', {class: 'muted right'}, timing));
}
