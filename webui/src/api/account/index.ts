import { http } from '@/http/client'

export interface Session {
  id: number
  created_at: string
  last_seen_at: string
  expires_at: string
  source_ip: string | null
  user_agent: string | null
  current: boolean
}

export interface ApiToken {
  id: number
  name: string
  prefix: string
  created_at: string
  last_used_at?: string | null
  expires_at?: string | null
}

export interface TotpEnrolment {
  otpauth_uri: string
  secret: string
  qr_svg: string
}

export function changePassword(currentPassword: string, newPassword: string): Promise<void> {
  return http.post('/me/password', { current_password: currentPassword, new_password: newPassword })
}

export async function sessions(): Promise<Session[]> {
  return (await http.get<{ items: Session[] }>('/me/sessions')).items
}

export function endSession(id: number): Promise<void> {
  return http.delete(`/me/sessions/${id}`)
}

export function startTotp(): Promise<TotpEnrolment> {
  return http.post('/me/totp')
}

export async function confirmTotp(code: string): Promise<string[]> {
  return (await http.post<{ recovery_codes: string[] }>('/me/totp/confirm', { code })).recovery_codes
}

export function disableTotp(code: string): Promise<void> {
  return http.post('/me/totp/disable', { code })
}

export async function renewRecoveryCodes(code: string): Promise<string[]> {
  return (await http.post<{ recovery_codes: string[] }>('/me/totp/recovery-codes', { code }))
    .recovery_codes
}

export async function tokens(): Promise<ApiToken[]> {
  return (await http.get<{ items: ApiToken[] }>('/me/tokens')).items
}

export function createToken(name: string, expiresInDays?: number): Promise<ApiToken & { token: string }> {
  return http.post('/me/tokens', expiresInDays ? { name, expires_in_days: expiresInDays } : { name })
}

export function revokeToken(id: number): Promise<void> {
  return http.delete(`/me/tokens/${id}`)
}
