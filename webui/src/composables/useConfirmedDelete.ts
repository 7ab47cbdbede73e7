import { shallowRef } from 'vue'
import { useAction } from './useAsync'

/** A delete that asks first: set `target` to open the confirm dialog; `confirm()`
 * removes it, closes the dialog and calls `done`; on failure the dialog stays
 * open with the error. */
export function useConfirmedDelete<T>(remove: (item: T) => Promise<unknown>, done: (item: T) => unknown) {
  const target = shallowRef<T | null>(null)
  const { busy, error, run } = useAction()
  async function confirm() {
    const item = target.value
    if (item === null) return
    const removed = await run(async () => {
      await remove(item)
      return true
    })
    if (removed) {
      target.value = null
      await done(item)
    }
  }
  return { target, busy, error, confirm }
}
