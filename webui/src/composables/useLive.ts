import { computed, shallowRef } from 'vue'
import * as stats from '@/api/stats'
import { liveRates } from '@/utils/live'
import { useAsync } from './useAsync'

/** The gateway's live figures, read every `refreshMs`: the newest reading and the
 * rates between it and the one before (null until there are two). */
export function useLive(refreshMs: number) {
  const previous = shallowRef<stats.Live | null>(null)
  const reading = useAsync(async () => {
    const next = await stats.live()
    previous.value = reading.data.value
    return next
  }, refreshMs)
  const rates = computed(() => liveRates(previous.value, reading.data.value))
  return { reading, rates }
}
