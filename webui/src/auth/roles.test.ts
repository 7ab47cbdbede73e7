import { describe, expect, it } from 'vitest'
import { can, homeFor } from './roles'

describe('roles', () => {
  it('follows the API role table', () => {
    expect(can('viewer', 'view')).toBe(true)
    expect(can('viewer', 'operate')).toBe(false)
    expect(can('operator', 'operate')).toBe(true)
    expect(can('operator', 'deleteStudies')).toBe(false)
    expect(can('admin', 'deleteStudies')).toBe(true)
    expect(can('auditor', 'view')).toBe(false)
    expect(can('auditor', 'readAudit')).toBe(true)
    expect(can('operator', 'readSettings')).toBe(true)
    expect(can('operator', 'installCertificate')).toBe(false)
    expect(can('admin', 'installCertificate')).toBe(true)
    expect(can(null, 'view')).toBe(false)
  })
  it('lets an uploader upload and nothing else', () => {
    expect(can('uploader', 'upload')).toBe(true)
    expect(can('uploader', 'view')).toBe(false)
    expect(can('viewer', 'upload')).toBe(false)
    expect(homeFor('uploader')).toBe('/upload')
  })
  it('sends an auditor to the audit log', () => {
    expect(homeFor('auditor')).toBe('/audit')
    expect(homeFor('viewer')).toBe('/')
  })
})
