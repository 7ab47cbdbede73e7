import { computed, ref, shallowRef } from 'vue'
import type { Page } from '@/http/client'
import { useAction } from './useAsync'

/** A keyset-paged list: one page on screen, Previous/Next through a stack of
 * the cursors that opened the pages before it (the API only says "next"). */
export function useKeysetPages<T>(fetch: (cursor: string | undefined) => Promise<Page<T>>) {
  const data = shallowRef<T[] | null>(null)
  const cursors = ref<string[]>([])
  const next = ref<string | null>(null)
  const { busy: loading, error, run } = useAction()

  async function show(cursor: string | undefined) {
    const page = await run(() => fetch(cursor))
    if (page) {
      data.value = page.items
      next.value = page.next_cursor
    }
    return page
  }
  /** Page 1 again, e.g. for a new filter. */
  async function first() {
    cursors.value = []
    await show(undefined)
  }
  /** The page on screen again, e.g. after a change to one of its rows. */
  async function reload() {
    await show(cursors.value[cursors.value.length - 1])
  }
  async function nextPage() {
    const cursor = next.value
    if (cursor && (await show(cursor))) cursors.value.push(cursor)
  }
  async function previousPage() {
    cursors.value.pop()
    await show(cursors.value[cursors.value.length - 1])
  }

  return {
    data,
    loading,
    error,
    page: computed(() => cursors.value.length + 1),
    hasNext: computed(() => next.value !== null),
    first,
    reload,
    nextPage,
    previousPage,
  }
}

export type KeysetPages<T> = ReturnType<typeof useKeysetPages<T>>
