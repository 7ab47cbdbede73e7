/** Which role may do what, as docs/api.md's role table says; the API enforces it,
 * the UI only hides what a role cannot use. */
export type Role = 'admin' | 'operator' | 'viewer' | 'auditor' | 'uploader'

export const ROLES: Role[] = ['admin', 'operator', 'viewer', 'auditor', 'uploader']

const CAPABILITIES = {
  /** Dashboards, studies, destinations, rules and the queue, read-only. */
  view: ['admin', 'operator', 'viewer'],
  /** Destinations, rules and queue actions; replay; dry-run. */
  operate: ['admin', 'operator'],
  deleteStudies: ['admin'],
  manageUsers: ['admin'],
  readAudit: ['admin', 'auditor'],
  /** Uploads (tus and the session API); an uploader sees only its own. */
  upload: ['admin', 'operator', 'uploader'],
  readSettings: ['admin', 'operator'],
  installCertificate: ['admin'],
} satisfies Record<string, Role[]>

export type Capability = keyof typeof CAPABILITIES

export function can(role: Role | null | undefined, capability: Capability): boolean {
  return !!role && (CAPABILITIES[capability] as Role[]).includes(role)
}

/** Where a role lands after login. */
export function homeFor(role: Role): string {
  if (role === 'uploader') return '/upload'
  return can(role, 'view') ? '/' : '/audit'
}
