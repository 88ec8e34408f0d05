// The Offloading Browser (AEM's): topics × nodes, a toggle per cell saying whether
// that node takes offloaded jobs of that topic. Any member accepts the change and
// it reaches the node within a heartbeat, so the grid re-reads after each toggle.
import {pathOf} from './api.js';
import {h, replace, empty} from './dom.js';

export class OffloadingView {
  constructor(ctx) {
    this.ctx = ctx;
    this.pending = new Set();   // "node\ntopic" of cells being changed
    this.data = null;
  }

  mount(el) {
    this.error = h('div', {class: 'inline-error', id: 'offloading-error', role: 'alert', hidden: true});
    this.grid = h('div', {class: 'table-wrap'}, empty('Loading…'));
    el.append(h('section', {class: 'panel'},
      h('header', {class: 'panel-head'}, h('h2', {}, 'Offloading Browser'),
        h('span', {class: 'muted'}, 'which node takes offloaded jobs of which topic')),
      h('p', {class: 'muted small legend'},
        h('span', {class: 'switch on demo', 'aria-hidden': 'true'}, h('i')), ' enabled: runs this topic, its own jobs and offloaded ones · ',
        h('span', {class: 'switch demo', 'aria-hidden': 'true'}, h('i')), ' disabled: runs none (its own go to other nodes) · ',
        h('span', {class: 'tag tag-excl'}, 'exclusive'), ' runs only this topic · – no consumer'),
      this.error,
      this.grid));
    this.refresh();
  }

  onTopology() {
    // After a change, give it a heartbeat to reach the topology before re-reading.
    if (!this.pending.size && Date.now() >= (this.quietUntil || 0)) this.refresh();
  }

  showError(message) {
    this.error.hidden = !message;
    this.error.textContent = message || '';
  }

  async refresh() {
    let nodes;
    try {
      nodes = normalise(await this.ctx.api('/api/v1/offloading'));
    } catch (err) {
      // Still show what the topology says, so the grid is useful while the API is not.
      nodes = this.ctx.topology ? normalise({nodes: this.ctx.topology.instances}) : [];
      this.showError(`Offloading settings unavailable: ${err.message}`);
    }
    this.data = nodes;
    this.render();
  }

  render() {
    const nodes = this.data || [];
    const topics = [...new Set(nodes.flatMap((n) => [...n.topics.keys()]))].sort();
    if (!nodes.length || !topics.length) {
      replace(this.grid, empty(nodes.length ? 'No node has consumers yet.' : 'No node in the topology.'));
      return;
    }
    replace(this.grid, h('table', {class: 'table offload-grid', id: 'offloading-grid'},
      h('thead', {}, h('tr', {}, h('th', {}, 'topic'),
        nodes.map((n) => h('th', {class: 'center', 'data-node': n.name}, n.name,
          n.leader ? h('span', {class: 'tag tag-leader'}, 'leader') : null,
          n.local ? h('span', {class: 'tag tag-local'}, 'this node') : null)))),
      h('tbody', {}, topics.map((topic) => h('tr', {'data-topic': topic},
        h('td', {class: 'mono'}, topic),
        nodes.map((n) => h('td', {class: 'center'}, this.cell(n, topic))))))));
  }

  cell(node, topic) {
    if (!node.topics.has(topic)) return h('span', {class: 'muted', title: `${node.name} has no consumer for ${topic}`}, '–');
    const mode = node.topics.get(topic);
    const on = mode !== 'disabled';
    const key = `${node.name}\n${topic}`;
    const busy = this.pending.has(key);
    return h('span', {class: 'cell'},
      h('button', {
        class: `switch${on ? ' on' : ''}${busy ? ' busy' : ''}`, type: 'button', role: 'switch',
        'aria-checked': String(on), disabled: busy, 'data-node': node.name, 'data-topic': topic,
        title: `${on ? 'disable' : 'enable'} offloading of ${topic} to ${node.name}`,
        onclick: () => this.set(node.name, topic, {enabled: !on}),
      }, h('i')),
      mode === 'exclusive'
        ? h('button', {class: 'tag tag-excl', type: 'button', disabled: busy, 'data-action': 'leave-exclusive',
          title: `${node.name} takes only ${topic}; click to take other topics again`,
          onclick: () => this.set(node.name, topic, {enabled: true})}, 'exclusive ×')
        : h('button', {class: 'link small excl', type: 'button', disabled: busy, 'data-action': 'exclusive',
          title: `${node.name} takes only ${topic}`,
          onclick: () => this.set(node.name, topic, {exclusive: true})}, 'exclusive'));
  }

  async set(nodeName, topic, body) {
    const key = `${nodeName}\n${topic}`;
    this.pending.add(key);
    this.render();
    try {
      await this.ctx.api(`/api/v1/offloading/${pathOf(nodeName)}/${pathOf(topic)}`, {method: 'PUT', body});
      this.showError('');
      const what = body.exclusive ? 'exclusive' : body.enabled ? 'enabled' : 'disabled';
      this.ctx.toast(`${topic} on ${nodeName}: ${what}`, 'ok');
      this.quietUntil = Date.now() + 2500;
      // Reflect the answer at once; the next read confirms it from the topology.
      const node = (this.data || []).find((n) => n.name === nodeName);
      if (node && what === 'exclusive') {
        node.exclusive = topic;
        for (const t of node.topics.keys()) node.topics.set(t, t === topic ? 'exclusive' : 'disabled');
      } else if (node && node.exclusive !== null) {
        // Leaving exclusive mode: the other topics go back to their enabled/disabled lists.
        node.exclusive = null;
        for (const t of node.topics.keys()) node.topics.set(t, node.disabled.has(t) ? 'disabled' : 'enabled');
        node.topics.set(topic, what);
      } else if (node) {
        node.topics.set(topic, what);
      }
    } catch (err) {
      this.showError(`Could not change ${topic} on ${nodeName}: ${err.message}`);
      this.ctx.toast(`Offloading change refused: ${err.message}`);
    } finally {
      this.pending.delete(key);
      this.render();
    }
  }
}

/**
 * `{nodes: [{name, leader, local, topics: [{topic, enabled}], offloading: {enabled, disabled,
 * exclusive}}]}` to [{name, leader, local, topics: Map(topic -> "enabled"|"disabled"|"exclusive")}].
 * Also takes topology instances (`topics` as strings + `offload_topics`), the fallback
 * while the offloading endpoint is unavailable.
 */
function normalise(data) {
  const list = Array.isArray(data) ? data : (data && (data.nodes || data.instances)) || [];
  return list.map((n) => {
    const enabledList = new Set(n.offload_topics || []);
    const settings = n.offloading && typeof n.offloading === 'object' && !Array.isArray(n.offloading) ? n.offloading : {};
    const exclusive = typeof settings.exclusive === 'string' ? settings.exclusive : null;
    const topics = new Map();
    for (const t of n.topics || []) {
      const topic = typeof t === 'string' ? t : t && t.topic;
      if (!topic) continue;
      let mode;
      if (exclusive !== null) mode = topic === exclusive ? 'exclusive' : 'disabled';
      else if (typeof t === 'object' && typeof t.enabled === 'boolean') mode = t.enabled ? 'enabled' : 'disabled';
      else mode = enabledList.has(topic) ? 'enabled' : 'disabled';
      topics.set(topic, mode);
    }
    const disabled = new Set(Array.isArray(settings.disabled) ? settings.disabled : []);
    return {name: n.name, leader: Boolean(n.leader), local: Boolean(n.local), exclusive, disabled, topics};
  });
}
