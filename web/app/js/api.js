// The API client: same-origin fetch with the wallet session (or the operator's admin token),
// JSON errors turned into ApiError with the server's stable code.

const SESSION_KEY = 'streamgate.session';
const ADMIN_KEY = 'streamgate.admin';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The wallet session, kept in localStorage so it survives reloads; null once expired. */
export function getSession() {
  try {
    const session = JSON.parse(localStorage.getItem(SESSION_KEY));
    if (session && Date.parse(session.expires_at) > Date.now()) return session;
  } catch {
    // A damaged entry is no session.
  }
  return null;
}

export function setSession(session) {
  if (session) localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else localStorage.removeItem(SESSION_KEY);
  window.dispatchEvent(new Event('session-change'));
}

/** The admin token: entered once per tab, so sessionStorage. */
export function getAdminToken() {
  return sessionStorage.getItem(ADMIN_KEY) || '';
}

export function setAdminToken(token) {
  if (token) sessionStorage.setItem(ADMIN_KEY, token);
  else sessionStorage.removeItem(ADMIN_KEY);
}

/** The bearer for calls that need a caller: the wallet session, else the admin token. */
export function bearer() {
  return getSession()?.token || getAdminToken() || '';
}

const ENDED = new Set(['session_expired', 'session_revoked', 'session_invalid']);

/**
 * `path` is under /api/v1 unless it starts with `//` (then it is a root path such as /health).
 * `auth`: 'session' (default; wallet session or admin token), 'admin', or false.
 */
export async function api(path, { method = 'GET', body, auth = 'session', headers = {}, accept = [] } = {}) {
  const url = path.startsWith('//') ? path.slice(1) : `/api/v1${path}`;
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const token = auth === 'admin' ? getAdminToken() : auth ? bearer() : '';
  if (token) init.headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection and retry.');
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  // `accept`: error statuses whose JSON body is the answer (e.g. /health's 503 report).
  if (!response.ok && !(accept.includes(response.status) && data)) {
    const error = new ApiError(
      response.status,
      data?.code || `http_${response.status}`,
      data?.message || response.statusText,
    );
    if (auth === 'session' && getSession() && ENDED.has(error.code)) setSession(null);
    throw error;
  }
  return data;
}

export const query = (params) => {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
};
