import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { can, homeFor, type Capability } from '@/auth/roles'
import AppLayout from '@/components/AppLayout.vue'
import { useSessionStore } from '@/stores/session'

declare module 'vue-router' {
  interface RouteMeta {
    /** Who may open the page; absent: anyone logged in. */
    capability?: Capability
    public?: boolean
    title?: string
  }
}

const routes: RouteRecordRaw[] = [
  {
    path: '/login',
    component: () => import('@/pages/login/LoginPage.vue'),
    meta: { public: true, title: 'Log in' },
  },
  {
    path: '/',
    component: AppLayout,
    children: [
      { path: '', component: () => import('@/pages/dashboard/DashboardPage.vue'), meta: { capability: 'view', title: 'Dashboard' } },
      { path: 'studies', component: () => import('@/pages/studies/StudiesPage.vue'), meta: { capability: 'view', title: 'Studies' } },
      { path: 'studies/:uid', component: () => import('@/pages/studies/StudyPage.vue'), meta: { capability: 'view', title: 'Study' }, props: true },
      { path: ':missing(.*)*', component: () => import('@/pages/NotFoundPage.vue'), meta: { title: 'Not found' } },
    ],
  },
]

export const router = createRouter({ history: createWebHistory(), routes })

router.beforeEach(async (to) => {
  const session = useSessionStore()
  if (!session.restored) await session.restore().catch(() => undefined)
  if (to.meta.public) return session.user && to.path === '/login' ? homeFor(session.user.role) : true
  if (!session.user) return { path: '/login', query: to.fullPath === '/' ? {} : { next: to.fullPath } }
  if (to.meta.capability && !can(session.role, to.meta.capability)) return homeFor(session.user.role)
  return true
})

router.afterEach((to) => {
  document.title = to.meta.title ? `${to.meta.title} · dicom-gw` : 'dicom-gw'
})
