// The studio's one way to the vault: JSON calls to the ordinary /api/v1 routes (and to
// /studio/session), authenticated by the HttpOnly session cookie; every call that changes
// something carries the session's CSRF value in X-Fyvault-Csrf.

let csrf = ''
let unauthorized = () => {}

/** Sets the CSRF value (from the sign-in or session answer). */
export const setCsrf = (value) => { csrf = value || '' }
/** What to do when a call finds the session gone (401). */
export const onUnauthorized = (fn) => { unauthorized = fn }

/** An API error: status, code and the vault's message. */
export class ApiError extends Error {
  constructor (status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** A JSON call to the vault (`path` under /api/v1 unless it starts with /studio). */
export async function api (method, path, body) {
  const url = path.startsWith('/studio') ? path : `/api/v1${path}`
  const headers = { Accept: 'application/json' }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (method !== 'GET') headers['X-Fyvault-Csrf'] = csrf
  const resp = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store'
  })
  const text = await resp.text()
  let data = null
  try { data = text ? JSON.parse(text) : null } catch { data = null }
  if (!resp.ok) {
    const err = data && data.error ? data.error : { code: `http_${resp.status}`, message: `the vault answered ${resp.status}` }
    if (resp.status === 401 && !path.startsWith('/studio/session')) unauthorized(err.message)
    throw new ApiError(resp.status, err.code, err.message)
  }
  return data
}

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s)

/** The vault has no such route (yet): a feature another part of the vault adds. */
export const missingRoute = (e) => e instanceof ApiError && e.status === 404 && e.code === 'no_such_route'
