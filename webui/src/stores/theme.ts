import { defineStore } from 'pinia'
import { ref, watch } from 'vue'

export type Theme = 'light' | 'dark'
const KEY = 'dicomgw.theme'

function initial(): Theme {
  const saved = globalThis.localStorage?.getItem(KEY)
  if (saved === 'light' || saved === 'dark') return saved
  return globalThis.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'
}

/** Light or dark; follows the system until the user picks one. */
export const useThemeStore = defineStore('theme', () => {
  const theme = ref<Theme>(initial())
  function apply() {
    globalThis.document?.documentElement.classList.toggle('dark', theme.value === 'dark')
  }
  watch(theme, (value) => {
    globalThis.localStorage?.setItem(KEY, value)
    apply()
  })
  function toggle() {
    theme.value = theme.value === 'dark' ? 'light' : 'dark'
  }
  apply()
  return { theme, toggle }
})
