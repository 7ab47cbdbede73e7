import { describe, expect, it } from 'vitest'
import { useConfirmedDelete } from './useConfirmedDelete'

describe('useConfirmedDelete', () => {
  it('removes the target once confirmed, closes, then says so', async () => {
    const rows = new Set(['a', 'b'])
    const said: string[] = []
    const removal = useConfirmedDelete(
      async (row: string) => rows.delete(row),
      (row) => said.push(`Deleted ${row}.`),
    )
    await removal.confirm()
    expect(rows.size).toBe(2)
    removal.target.value = 'a'
    await removal.confirm()
    expect([[...rows], removal.target.value, said]).toEqual([['b'], null, ['Deleted a.']])
  })

  it('stays open with the error when the delete fails', async () => {
    const said: string[] = []
    const removal = useConfirmedDelete(
      () => Promise.reject(new Error('in use by rule r1')),
      (row: string) => said.push(row),
    )
    removal.target.value = 'pacs'
    await removal.confirm()
    expect([removal.target.value, removal.error.value, removal.busy.value, said]).toEqual(['pacs', 'in use by rule r1', false, []])
  })
})
