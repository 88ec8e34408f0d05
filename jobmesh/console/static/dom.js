// Small DOM and formatting helpers. Everything that comes from the API goes into
// the page as text nodes (never innerHTML), so job properties cannot inject markup.

/** Build an element: h('div', {class: 'x', onclick: fn, 'data-id': 1}, child, [children]). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      on(el, key.slice(2), value);
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

// An element's handlers live in a table on it, called by one listener per event type, so that
// `replace` can keep an element and give it the handlers of the one built to take its place.
const HANDLERS = Symbol('handlers');

function dispatch(event) {
  const fn = this[HANDLERS] && this[HANDLERS][event.type];
  return fn ? fn.call(this, event) : undefined;
}

function on(el, type, fn) {
  (el[HANDLERS] ||= {})[type] = fn;
  el.addEventListener(type, dispatch);  // the same listener twice is one
}

/** Make `el`'s children the given ones (what h() takes: nodes, text, arrays, nulls skipped).
 *
 * Views rebuild their content on every poll. Swapping in the new nodes wholesale lost clicks:
 * a press and a release that straddle a rebuild land on two different buttons, and no click
 * fires. So the children already there are kept where the new ones are the same element
 * (tag and identity: `id` and every `data-*` attribute, e.g. the row of the same queue, a
 * button of the same action) and brought up to date in place: attributes, text, the
 * handlers of the new element, a form control's value unless it has the focus. Anything
 * else is replaced. A node passed in that already is a child of `el` is taken as it is. */
export function replace(el, ...children) {
  const fresh = [];
  append({append: (node) => fresh.push(node)}, children);
  if (fresh.some((node) => node.parentNode === el)) {
    el.replaceChildren(...fresh);
  } else {
    patchChildren(el, fresh);
  }
  return el;
}

function patchChildren(parent, fresh) {
  const old = [...parent.childNodes];
  fresh.forEach((node, i) => {
    const was = old[i];
    if (was === undefined) parent.append(node);
    else if (!patch(was, node)) parent.replaceChild(node, was);
  });
  for (let i = fresh.length; i < old.length; i++) old[i].remove();
}

const CONTROLS = new Set(['INPUT', 'SELECT', 'TEXTAREA']);

function sameIdentity(a, b) {
  if (a.nodeName !== b.nodeName || a.id !== b.id) return false;
  const keys = (el) => Object.entries(el.dataset).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)).join('\n');
  return keys(a) === keys(b);
}

/** `was` made to show what `node` shows; false when it is not the same element (replace it). */
function patch(was, node) {
  if (was.nodeType !== node.nodeType) return false;
  if (was.nodeType === Node.TEXT_NODE || was.nodeType === Node.COMMENT_NODE) {
    if (was.data !== node.data) was.data = node.data;
    return true;
  }
  if (was.nodeType !== Node.ELEMENT_NODE || !sameIdentity(was, node)) return false;
  for (const {name} of [...was.attributes]) if (!node.hasAttribute(name)) was.removeAttribute(name);
  for (const {name, value} of node.attributes) {
    if (name === 'style') {  // through the CSSOM: the console's CSP refuses a style attribute
      if (was.style.cssText !== node.style.cssText) was.style.cssText = node.style.cssText;
    } else if (was.getAttribute(name) !== value) {
      was.setAttribute(name, value);
    }
  }
  was[HANDLERS] = node[HANDLERS];
  for (const type of Object.keys(node[HANDLERS] || {})) was.addEventListener(type, dispatch);
  patchChildren(was, [...node.childNodes]);
  if (CONTROLS.has(was.nodeName) && was !== document.activeElement) {
    if (was.value !== node.value) was.value = node.value;
    if (was.checked !== node.checked) was.checked = node.checked;
  }
  return true;
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
