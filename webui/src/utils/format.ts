/** Formatting for people: sizes, counts, ages, times, DICOM values. */

const BYTE_UNITS = ['B', 'KB', 'MB', 'GB', 'TB', 'PB']

/** 1536 -> "1.5 KB" (powers of 1024, as disk tools show them). */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '—'
  let value = Math.abs(bytes)
  let unit = 0
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024
    unit += 1
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2
  return `${bytes < 0 ? '-' : ''}${value.toFixed(digits)} ${BYTE_UNITS[unit]}`
}

/** 1234567 -> "1,234,567" */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  return Math.round(n).toLocaleString('en-US')
}

/** A rate per second with sensible precision: 0.25 -> "0.25", 12.3 -> "12.3", 1234 -> "1,234". */
export function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return '—'
  if (perSecond === 0) return '0'
  if (perSecond < 1) return perSecond.toFixed(2)
  if (perSecond < 100) return perSecond.toFixed(1)
  return formatCount(perSecond)
}

/** Seconds as the largest two units: 75 -> "1 min 15 s", 90061 -> "1 d 1 h". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—'
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s} s`
  const units: [string, number][] = [
    ['d', 86400],
    ['h', 3600],
    ['min', 60],
    ['s', 1],
  ]
  const parts: string[] = []
  let rest = s
  for (const [name, size] of units) {
    const n = Math.floor(rest / size)
    rest -= n * size
    if (n > 0 || parts.length > 0) parts.push(`${n} ${name}`)
    if (parts.length === 2) break
  }
  return parts.filter((p) => !p.startsWith('0 ')).join(' ')
}

function pad(n: number): string {
  return String(n).padStart(2, '0')
}

/** An ISO timestamp in the browser's time zone: "2026-11-22 14:03:09". */
export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) return '—'
  const d = new Date(iso)
  if (Number.isNaN(d.getTime())) return iso
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  )
}

/** How long ago: "just now", "5 min ago", "3 h ago", "2 d ago". */
export function formatAgo(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) return 'never'
  const then = new Date(iso).getTime()
  if (Number.isNaN(then)) return iso
  const s = (now.getTime() - then) / 1000
  if (s < 10) return 'just now'
  return `${formatDuration(s)} ago`
}

/** A DICOM person name (PN, ^-separated components): "DOE^JOHN^^DR" -> "DOE, JOHN, DR". */
export function formatPersonName(pn: string | null | undefined): string {
  if (!pn) return '—'
  const alphabetic = pn.split('=')[0]
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = alphabetic.split('^')
  const first = [prefix, given, middle].filter(Boolean).join(' ')
  const name = [family, first].filter(Boolean).join(', ')
  return [name, suffix].filter(Boolean).join(' ') || pn
}

/** A DICOM date (DA, YYYYMMDD) or an ISO date as YYYY-MM-DD. */
export function formatDicomDate(value: string | null | undefined): string {
  if (!value) return '—'
  const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(value.trim())
  return m ? `${m[1]}-${m[2]}-${m[3]}` : value
}

/** A long UID shortened in the middle for tables (the full one goes in a title). */
export function shortUid(uid: string, keep = 10): string {
  return uid.length <= keep * 2 + 1 ? uid : `${uid.slice(0, keep)}…${uid.slice(-keep)}`
}
