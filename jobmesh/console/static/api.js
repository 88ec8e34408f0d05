// The REST client and the live event stream. The API token (when the node has
// `[security] http_token`) lives in sessionStorage: asked once, sent on every call.

const TOKEN_KEY = 'jobmesh.token';
const REQUEST_TIMEOUT_MS = 10000;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  tokenListeners.forEach((fn) => fn(token));
}

const tokenListeners = [];
export function onTokenChange(fn) { tokenListeners.push(fn); }

// Set by the app: shows the token form and resolves with the new token
// (or rejects if the user gives up). One prompt is shared by all waiting calls.
let askForToken = null;
let pendingAsk = null;
export function setTokenPrompt(fn) { askForToken = fn; }

function promptToken(rejected) {
  if (!askForToken) return Promise.reject(new ApiError(401, 'this node needs an API token'));
  if (!pendingAsk) {
    pendingAsk = askForToken(rejected).finally(() => { pendingAsk = null; });
  }
  return pendingAsk;
}

/** Call the API; returns the parsed JSON body, throws ApiError with the server's message. */
export async function api(path, {method = 'GET', body, authRetries = 3} = {}) {
  const headers = {Accept: 'application/json'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const tokenUsed = getToken();
  if (tokenUsed) headers.Authorization = `Bearer ${tokenUsed}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal: controller.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, err.name === 'AbortError' ? `${method} ${path}: no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : 'cannot reach the node');
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 401 && authRetries > 0) {
    // Another call may already have fixed the token while this one was in flight.
    if (getToken() === tokenUsed) await promptToken(Boolean(tokenUsed));
    return api(path, {method, body, authRetries: authRetries - 1});
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const message = (data && typeof data === 'object' && data.error) ? data.error
      : `${response.status} ${response.statusText || 'error'}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

/** Save what ``path`` streams (a job's payload) as ``filename``: fetched with the token, since
 * a plain link cannot send one. Throws ApiError with the server's message. */
export async function download(path, filename) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {headers});
  } catch {
    throw new ApiError(0, 'cannot reach the node');
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText || 'error'}`;
    try { message = (await response.json()).error || message; } catch { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement('a'), {href: url, download: filename});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** The path of a job, schedule, node or topic, each segment escaped but slashes kept. */
export function pathOf(...parts) {
  return parts.map((p) => String(p).split('/').map(encodeURIComponent).join('/')).join('/');
}

// Notification topics the server may send as named SSE events (DESIGN §1).
const NOTIFICATION_TOPICS = [
  'job/added', 'job/started', 'job/finished', 'job/failed',
  'job/cancelled', 'job/stopped', 'job/removed',
];

/**
 * The `/api/v1/events` stream. EventSource cannot send headers, so the token goes in
 * `?token=`. EventSource retries network errors by itself; a refused connection
 * (401, 404, node restarting) closes it, and we reconnect with a growing delay.
 */
export class EventStream {
  constructor({onEvent, onStatus}) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.source = null;
    this.retryMs = 1000;
    this.retryTimer = null;
  }

  connect() {
    this.close();
    const token = getToken();
    const url = '/api/v1/events' + (token ? `?token=${encodeURIComponent(token)}` : '');
    const source = new EventSource(url);
    this.source = source;
    this.onStatus('connecting');
    source.onopen = () => { this.retryMs = 1000; this.onStatus('live'); };
    const handle = (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch { return; }
      if (!data || typeof data !== 'object') return;
      if (!data.topic && event.type !== 'message') data.topic = event.type;
      this.onEvent(data);
    };
    source.onmessage = handle;
    for (const topic of NOTIFICATION_TOPICS) source.addEventListener(topic, handle);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        this.onStatus('offline');
        this.scheduleReconnect();
      } else {
        this.onStatus('connecting');
      }
    };
  }

  scheduleReconnect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, 15000);
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }
}
