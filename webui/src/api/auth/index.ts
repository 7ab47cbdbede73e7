import { http } from '@/http/client'
import type { Role } from '@/auth/roles'

export interface User {
  id: number
  username: string
  role: Role
}

export interface LoginAnswer {
  user: User
  csrf_token: string
}

/** POST /auth/login; `totp` only for users with a second factor. */
export function login(username: string, password: string, totp?: string): Promise<LoginAnswer> {
  return http.post('/auth/login', totp ? { username, password, totp } : { username, password })
}

export function logout(): Promise<void> {
  return http.post('/auth/logout')
}

/** GET /me: who the session belongs to, whether TOTP is on, and its CSRF token. */
export function me(): Promise<User & { totp_enabled: boolean; csrf_token?: string }> {
  return http.get('/me')
}
