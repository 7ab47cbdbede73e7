/**
 * The one HTTP client: JSON in and out, the CSRF token on state-changing
 * requests, and every failure turned into an ApiError with a message for people.
 */
import { isProblem, messageFor, problemKind, type Problem } from './problem'

export type Query = Record<string, string | number | boolean | null | undefined>

export class ApiError extends Error {
  readonly status: number
  readonly problem: Problem | null

  constructor(status: number, problem: Problem | null) {
    super(messageFor(status, problem))
    this.name = 'ApiError'
    this.status = status
    this.problem = problem
  }

  /** The problem type without its URN prefix (`invalid-request`), or ''. */
  get kind(): string {
    return problemKind(this.problem)
  }

  get field(): string | undefined {
    return this.problem?.field
  }
}

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

export interface RequestOptions {
  query?: Query
  body?: unknown
  signal?: AbortSignal
  /** Error statuses whose body is an answer, not a problem (readiness' 503). */
  accept?: number[]
}

export class HttpClient {
  /** From the login answer (or GET /me); sent as X-CSRF-Token. */
  csrfToken: string | null = null
  /** Called when a request other than login finds the session gone (401). */
  onUnauthenticated: (() => void) | null = null

  constructor(
    public base = '/api/v1',
    private readonly fetchImpl: typeof fetch = (...args) => fetch(...args),
  ) {}

  url(path: string, query?: Query): string {
    const params = new URLSearchParams()
    for (const [key, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null && value !== '') params.append(key, String(value))
    }
    const search = params.toString()
    return `${this.base}${path}${search ? `?${search}` : ''}`
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' }
    if (options.body !== undefined) headers['Content-Type'] = 'application/json'
    if (UNSAFE.has(method) && this.csrfToken) headers['X-CSRF-Token'] = this.csrfToken
    let response: Response
    try {
      response = await this.fetchImpl(this.url(path, options.query), {
        method,
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        credentials: 'same-origin',
        signal: options.signal,
      })
    } catch (err) {
      if (err instanceof DOMException && err.name === 'AbortError') throw err
      throw new ApiError(0, null)
    }
    if (!response.ok && !options.accept?.includes(response.status)) {
      const error = new ApiError(response.status, await readProblem(response))
      if (response.status === 401 && error.kind === 'unauthenticated' && path !== '/auth/login') {
        this.onUnauthenticated?.()
      }
      throw error
    }
    if (response.status === 204) return undefined as T
    const type = response.headers.get('Content-Type') ?? ''
    return (type.includes('json') ? await response.json() : await response.text()) as T
  }

  get<T>(path: string, query?: Query, signal?: AbortSignal): Promise<T> {
    return this.request<T>('GET', path, { query, signal })
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, { body })
  }

  put<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('PUT', path, { body })
  }

  patch<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('PATCH', path, { body })
  }

  delete<T = void>(path: string): Promise<T> {
    return this.request<T>('DELETE', path)
  }
}

async function readProblem(response: Response): Promise<Problem | null> {
  try {
    const body: unknown = await response.json()
    return isProblem(body) ? body : null
  } catch {
    return null
  }
}

/** The app's client (same origin as the page). */
export const http = new HttpClient()

/** A page of a keyset-paged list. */
export interface Page<T> {
  items: T[]
  next_cursor: string | null
}
