import { describe, expect, it } from 'vitest'
import type { Page } from '@/http/client'
import { useKeysetPages } from './useKeysetPages'

// Five rows, two a page, cursors as the API gives them: the last key seen.
const ROWS = [1, 2, 3, 4, 5]
function twoAPage(cursor: string | undefined): Promise<Page<number>> {
  const start = cursor === undefined ? 0 : ROWS.indexOf(Number(cursor)) + 1
  const items = ROWS.slice(start, start + 2)
  const last = items[items.length - 1]
  return Promise.resolve({ items, next_cursor: start + 2 < ROWS.length ? String(last) : null })
}

describe('useKeysetPages', () => {
  it('goes forward to the last page and back to the first', async () => {
    const pages = useKeysetPages(twoAPage)
    expect(pages.data.value).toBeNull()
    await pages.first()
    expect([pages.data.value, pages.page.value, pages.hasNext.value]).toEqual([[1, 2], 1, true])
    await pages.nextPage()
    await pages.nextPage()
    expect([pages.data.value, pages.page.value, pages.hasNext.value]).toEqual([[5], 3, false])
    await pages.nextPage()
    expect(pages.page.value).toBe(3)
    await pages.previousPage()
    expect([pages.data.value, pages.page.value]).toEqual([[3, 4], 2])
    await pages.previousPage()
    expect([pages.data.value, pages.page.value, pages.hasNext.value]).toEqual([[1, 2], 1, true])
  })

  it('reloads the page on screen, and first() starts again', async () => {
    const seen: (string | undefined)[] = []
    const pages = useKeysetPages((cursor: string | undefined) => {
      seen.push(cursor)
      return twoAPage(cursor)
    })
    await pages.first()
    await pages.nextPage()
    await pages.reload()
    expect(seen).toEqual([undefined, '2', '2'])
    expect(pages.page.value).toBe(2)
    await pages.first()
    expect([pages.data.value, pages.page.value]).toEqual([[1, 2], 1])
  })

  it('stays on its page when the next one fails, and says why', async () => {
    let fail = false
    const pages = useKeysetPages((cursor: string | undefined) => (fail ? Promise.reject(new Error('gateway gone')) : twoAPage(cursor)))
    await pages.first()
    fail = true
    const loading = pages.nextPage()
    expect(pages.loading.value).toBe(true)
    await loading
    expect([pages.data.value, pages.page.value, pages.error.value, pages.loading.value]).toEqual([[1, 2], 1, 'gateway gone', false])
    fail = false
    await pages.nextPage()
    expect([pages.data.value, pages.page.value, pages.error.value]).toEqual([[3, 4], 2, null])
  })
})
