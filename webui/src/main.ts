import { createPinia } from 'pinia'
import { createApp } from 'vue'
import App from './App.vue'
import { router } from './router'
import { useSessionStore } from './stores/session'
import { useThemeStore } from './stores/theme'
import './style.css'

const app = createApp(App)
app.use(createPinia())
useThemeStore()
const session = useSessionStore()
session.bind()
// A request that finds the session gone sends the user to the login page, which says why.
session.$subscribe(() => {
  const here = router.currentRoute.value
  if (!session.user && session.restored && !here.meta.public) {
    void router.push({ path: '/login', query: { next: here.fullPath } })
  }
})
app.use(router)
app.mount('#app')
