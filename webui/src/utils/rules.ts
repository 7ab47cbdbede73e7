/** Routing rules' `match` as text, one condition per line: `modality = CT`,
 * alternatives with `|` (`modality = CT | MR`), attributes and patterns as the
 * config file writes them (`glob:CT*`, `re:^(CT|MR)$`, `cidr:10.0.0.0/8`). */
export type Match = Record<string, string | number | string[]>

export function formatMatch(match: Match | undefined): string {
  return Object.entries(match ?? {})
    .map(([key, value]) => `${key} = ${Array.isArray(value) ? value.join(' | ') : String(value)}`)
    .join('\n')
}

/** The text back as a match, or the first line that is not `attribute = pattern`. */
export function parseMatch(text: string): { match: Match } | { error: string } {
  const match: Match = {}
  for (const [n, raw] of text.split('\n').entries()) {
    const line = raw.trim()
    if (!line) continue
    const eq = line.indexOf('=')
    const key = eq > 0 ? line.slice(0, eq).trim() : ''
    const value = eq > 0 ? line.slice(eq + 1).trim() : ''
    if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(key) || !value) {
      return { error: `line ${n + 1}: write "attribute = pattern"` }
    }
    // NOTE: a regular expression may itself contain "|": only plain values split.
    const alternatives = value.startsWith('re:') ? [value] : value.split('|').map((v) => v.trim()).filter(Boolean)
    match[key] = alternatives.length === 1 ? alternatives[0] : alternatives
  }
  return { match }
}
