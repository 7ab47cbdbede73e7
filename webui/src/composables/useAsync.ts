import { onBeforeUnmount, onMounted, ref, shallowRef, type Ref, type ShallowRef } from 'vue'

export interface AsyncState<T> {
  data: ShallowRef<T | null>
  loading: Ref<boolean>
  error: Ref<string | null>
  load: () => Promise<void>
}

/** Data from a loader, with loading and error states; loads on mount. With
 * `refreshMs`, loads again every so often while the page is visible. */
export function useAsync<T>(loader: () => Promise<T>, refreshMs?: number): AsyncState<T> {
  const data = shallowRef<T | null>(null)
  const loading = ref(false)
  const error = ref<string | null>(null)
  let timer: ReturnType<typeof setTimeout> | undefined
  let alive = true

  async function load() {
    loading.value = true
    try {
      data.value = await loader()
      error.value = null
    } catch (err) {
      error.value = err instanceof Error ? err.message : String(err)
    } finally {
      loading.value = false
    }
  }

  async function tick() {
    if (!document.hidden) await load()
    if (alive && refreshMs) timer = setTimeout(tick, refreshMs)
  }

  onMounted(() => (refreshMs ? tick() : load()))
  onBeforeUnmount(() => {
    alive = false
    clearTimeout(timer)
  })
  return { data, loading, error, load }
}

/** Runs an action, keeping its own busy flag and error for where it was started. */
export function useAction() {
  const busy = ref(false)
  const error = ref<string | null>(null)
  async function run<T>(action: () => Promise<T>): Promise<T | undefined> {
    busy.value = true
    error.value = null
    try {
      return await action()
    } catch (err) {
      error.value = err instanceof Error ? err.message : String(err)
      return undefined
    } finally {
      busy.value = false
    }
  }
  return { busy, error, run }
}
