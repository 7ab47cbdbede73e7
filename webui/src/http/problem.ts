/** RFC 9457 problem details as the API sends them (docs/api.md, "Errors"). */
export interface Problem {
  type: string
  title: string
  status: number
  detail?: string
  field?: string
  retry_after_s?: number
  request_id?: string
  [extension: string]: unknown
}

const TYPE_PREFIX = 'urn:dicom-gw:problem:'

/** The stable part of a problem's type: `invalid-request`, `totp-required`, ... */
export function problemKind(problem: Problem | null): string {
  if (!problem || typeof problem.type !== 'string') return ''
  return problem.type.startsWith(TYPE_PREFIX) ? problem.type.slice(TYPE_PREFIX.length) : problem.type
}

export function isProblem(value: unknown): value is Problem {
  if (typeof value !== 'object' || value === null) return false
  const v = value as Record<string, unknown>
  return typeof v.type === 'string' && typeof v.status === 'number'
}

/** "4 min 10 s" */
export function formatWait(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds))
  if (s < 60) return `${s} s`
  const m = Math.floor(s / 60)
  const rest = s % 60
  if (m < 60) return rest ? `${m} min ${rest} s` : `${m} min`
  const h = Math.floor(m / 60)
  return m % 60 ? `${h} h ${m % 60} min` : `${h} h`
}

/** What to tell an operator about a failed request, from its status and problem. */
export function messageFor(status: number, problem: Problem | null): string {
  const kind = problemKind(problem)
  const detail = problem?.detail
  if (status === 0) return 'The gateway cannot be reached: check that it is running and the network is up.'
  switch (kind) {
    case 'unauthenticated':
      return 'Your session has ended (expired or logged out elsewhere). Log in again.'
    case 'invalid-credentials':
      return detail ? capitalize(detail) + '.' : 'Wrong user name or password.'
    case 'totp-required':
      return 'Enter the code from your authenticator app (or a recovery code).'
    case 'too-many-requests': {
      const wait = problem?.retry_after_s
      const what = problem?.title ?? 'Too many attempts'
      return typeof wait === 'number' ? `${what}: try again in ${formatWait(wait)}.` : `${what}: try again later.`
    }
    case 'csrf':
      return 'The request could not be verified (CSRF). Reload the page and try again.'
    case 'forbidden':
      return 'Your role does not allow this.'
    case 'from-config':
      return `${detail ?? 'It is declared in the config file'}: change it in the config file.`
    case 'secrets-key':
      return 'Stored secrets cannot be decrypted with this gateway\'s key (secrets.key).'
  }
  if (detail) {
    const field = problem?.field ? ` (${problem.field})` : ''
    return capitalize(detail) + field
  }
  if (status === 404) return 'Not found.'
  if (status === 409) return 'Conflict with the current state; reload and try again.'
  if (status === 422) return 'The request was not valid.'
  if (status === 503) return 'The gateway is not ready (database or storage unavailable).'
  if (status >= 500) {
    const id = problem?.request_id ? ` (request id ${problem.request_id})` : ''
    return `The gateway failed to answer this request${id}; see its log.`
  }
  return problem?.title ?? `Request failed (HTTP ${status}).`
}

function capitalize(text: string): string {
  return text ? text[0].toUpperCase() + text.slice(1) : text
}
