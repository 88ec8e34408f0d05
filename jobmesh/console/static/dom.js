// Small DOM and formatting helpers. Everything that comes from the API goes into
// the page as text nodes (never innerHTML), so job properties cannot inject markup.

/** Build an element: h('div', {class: 'x', onclick: fn, 'data-id': 1}, child, [children]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'style' && typeof value === 'object') {
      Object.assign(el.style, value);
    } else if (key === 'value') {
      el.value = value;
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const STATES = ['QUEUED', 'ACTIVE', 'SUCCEEDED', 'STOPPED', 'GIVEN_UP', 'ERROR', 'DROPPED'];
export const FINAL_STATES = new Set(['SUCCEEDED', 'STOPPED', 'GIVEN_UP', 'ERROR', 'DROPPED']);

export function stateBadge(state) {
  return h('span', {class: `state state-${String(state).toLowerCase()}`}, String(state).replace('_', ' '));
}

/** Job ids are "<time hex>-<node part>-<counter>": the last two parts tell jobs apart. */
export function shortId(id) {
  const parts = String(id).split('-');
  return parts.length >= 3 ? parts.slice(1).join('-') : String(id).slice(-12);
}

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

export function clockTime(iso) {
  const t = parseTime(iso);
  if (t === null) return '–';
  const d = new Date(t);
  const today = new Date();
  const time = d.toLocaleTimeString([], {hour12: false});
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** "3 s ago", "in 2 min": relative to now. */
export function relative(iso, now = Date.now()) {
  const t = parseTime(iso);
  if (t === null) return '–';
  const delta = (t - now) / 1000;
  const text = humanSeconds(Math.abs(delta));
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

export function humanSeconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

/** Milliseconds (as the statistics give them) to a short text. */
export function ms(value) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return '–';
  return humanSeconds(Number(value) / 1000);
}

export function num(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'number') {
    return Number.isInteger(value) ? value.toLocaleString() : value.toLocaleString(undefined, {maximumFractionDigits: 2});
  }
  return String(value);
}

/** Run `fn` at most once per `wait` ms, always ending with a trailing call (live refreshes). */
export function throttle(fn, wait) {
  let timer = null;
  let pending = false;
  let last = 0;
  return function throttled() {
    const now = Date.now();
    if (timer) { pending = true; return; }
    const delay = Math.max(0, last + wait - now);
    timer = setTimeout(async () => {
      last = Date.now();
      try { await fn(); } finally {
        timer = null;
        if (pending) { pending = false; throttled(); }
      }
    }, delay);
  };
}

export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}

/** A labelled empty state for a table or a panel. */
export function empty(text) {
  return h('div', {class: 'empty'}, text);
}
