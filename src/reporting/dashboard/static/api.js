// Talking to the API: the bearer token (sessionStorage only, never a URL), problem+json errors,
// and one place that reacts to a 401.

const TOKEN_KEY = 'reporting.token';
// A request still unanswered after this long is given up with a message (the API answers in
// milliseconds; a hung connection would otherwise leave "loading…" on screen for good).
const TIMEOUT_MS = 20_000;

export class ApiError extends Error {
  constructor(status, detail, { title = '', headers = null, errors = [] } = {}) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.detail = detail || title || '';
    this.headers = headers;
    this.errors = errors;
  }
}

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);
export const setToken = (token) => sessionStorage.setItem(TOKEN_KEY, token);
export const clearToken = () => sessionStorage.removeItem(TOKEN_KEY);

/** The token's claims, decoded for display and timers only (the server alone verifies them). */
export function tokenClaims(token) {
  const parts = (token ?? '').split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

let unauthorizedHandler = () => {};

/** `handler(error)` runs on every 401: the token is gone or no longer accepted. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/** For requests made outside `request()` (the live stream). */
export function reportUnauthorized(error) {
  unauthorizedHandler(error);
}

async function problemOf(response) {
  try {
    const body = await response.json();
    return {
      detail: typeof body.detail === 'string' ? body.detail : '',
      title: typeof body.title === 'string' ? body.title : '',
      errors: Array.isArray(body.errors) ? body.errors : [],
    };
  } catch {
    return { detail: response.statusText, title: '', errors: [] };
  }
}

/**
 * One request with the bearer token; resolves to {data, headers, status}, throws ApiError.
 * `fresh`: we were told the answer changed; the API must not serve its previous copy.
 */
export async function request(
  path,
  { method = 'GET', body, signal, token = getToken(), fresh = false } = {},
) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (fresh) headers['Cache-Control'] = 'no-cache';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const timeout = AbortSignal.timeout(TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (error) {
    if (timeout.aborted) {
      const failure = new ApiError(0, '', { title: 'timeout' });
      failure.timeoutSeconds = TIMEOUT_MS / 1000;
      throw failure;
    }
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, '', { title: 'network' });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    const error = new ApiError(response.status, problem.detail, {
      title: problem.title,
      headers: response.headers,
      errors: problem.errors,
    });
    if (response.status === 401) unauthorizedHandler(error);
    throw error;
  }
  const data = response.status === 204 ? null : await response.json();
  return { data, headers: response.headers, status: response.status };
}

export async function getJson(path, options) {
  return (await request(path, options)).data;
}

export const enc = encodeURIComponent;
