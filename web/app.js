// The studio's shell: sign-in, the API helper, the header (org, environment switcher, pages).
// Pages: secrets.js, tokens.js, audit.js. Every JSON call goes to the vault's ordinary /api/v1
// routes, authenticated by the HttpOnly session cookie; mutating calls carry the CSRF header.
import { h, mount, errorText } from './ui.js'
import { api, ApiError, setCsrf, onUnauthorized, seg } from './api.js'
import { secretsPage } from './secrets.js'
import { tokensPage } from './tokens.js'
import { auditPage } from './audit.js'

const root = document.getElementById('app')
onUnauthorized((why) => signedOut(why))

const state = {
  admin: null,
  orgs: [],
  envs: [],
  org: localStorage.getItem('fyvault.org') || '',
  env: localStorage.getItem('fyvault.env') || ''
}

function signedOut (why) {
  setCsrf('')
  state.admin = null
  signInPage(why)
}

function signInPage (why) {
  const input = h('input', {
    type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'fvadmin_…', 'aria-label': 'Admin token'
  })
  const msg = h('p', { class: 'error', role: 'alert' }, why || '')
  const submit = async (e) => {
    e.preventDefault()
    await signIn(input.value, msg)
    input.value = ''
  }
  mount(root, h('main', { class: 'signin' },
    h('form', { class: 'card signin-card', onsubmit: submit },
      h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'fy'), 'fyvault studio'),
      h('h1', {}, 'Sign in'),
      h('p', { class: 'muted' }, 'Paste an admin token. The studio keeps a session cookie for 12 hours; the token itself is not stored in the browser.'),
      h('label', { for: 'token' }, 'Admin token'),
      input,
      h('button', { class: 'primary', type: 'submit' }, 'Sign in'),
      msg)))
  input.focus()
}

async function signIn (token, msg) {
  try {
    const s = await api('POST', '/studio/session', { token: token.trim() })
    setCsrf(s.csrf)
    state.admin = s.admin
    await start()
  } catch (e) {
    mount(msg, errorText(e))
  }
}

async function signOut () {
  try { await api('DELETE', '/studio/session') } catch { /* ended already */ }
  signedOut('Signed out.')
}

async function loadOrgs () {
  state.orgs = (await api('GET', '/admin/orgs')).orgs
  if (!state.orgs.some((o) => o.org_id === state.org)) state.org = state.orgs[0] ? state.orgs[0].org_id : ''
  state.envs = state.org ? (await api('GET', `/admin/orgs/${seg(state.org)}/environments`)).environments : []
  if (!state.envs.some((e) => e.environment === state.env)) state.env = state.envs[0] ? state.envs[0].environment : ''
  localStorage.setItem('fyvault.org', state.org)
  localStorage.setItem('fyvault.env', state.env)
}

const PAGES = { secrets: ['Secrets', secretsPage], tokens: ['Tokens', tokensPage], audit: ['Audit', auditPage] }

function page () {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1]
  return PAGES[name] ? name : 'secrets'
}

async function render () {
  const name = page()
  const orgSelect = h('select', { id: 'org', 'aria-label': 'Organisation', onchange: async (e) => { state.org = e.target.value; state.env = ''; await loadOrgs(); render() } },
    state.orgs.map((o) => h('option', { value: o.org_id, selected: o.org_id === state.org }, o.name)))
  const envSelect = h('select', { id: 'env', 'aria-label': 'Environment', onchange: (e) => { state.env = e.target.value; localStorage.setItem('fyvault.env', state.env); render() } },
    state.envs.map((e) => h('option', { value: e.environment, selected: e.environment === state.env }, e.environment)))
  const content = h('main', { class: 'content', id: 'content' })
  mount(root,
    h('header', { class: 'top' },
      h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'fy'), h('span', { class: 'brand-name' }, 'fyvault')),
      h('div', { class: 'scope' }, orgSelect, h('span', { class: 'sep' }, '/'), envSelect),
      h('nav', { class: 'tabs' }, Object.entries(PAGES).map(([key, [label]]) =>
        h('a', { href: `#/${key}`, class: key === name ? 'active' : '', 'aria-current': key === name ? 'page' : false }, label))),
      h('div', { class: 'who' },
        h('span', { class: 'muted admin', title: 'The admin token this session acts as' }, state.admin),
        h('button', { class: 'ghost', type: 'button', id: 'signout', onclick: signOut }, 'Sign out'))),
    content)
  if (!state.org || !state.env) {
    mount(content, h('div', { class: 'card empty' }, h('h2', {}, 'No environment yet'),
      h('p', {}, 'Create an org and an environment with `fyvault admin org create` and `fyvault admin env create` (the environment key pair is made on your machine, never here).')))
    return
  }
  try {
    const environment = state.envs.find((e) => e.environment === state.env)
    await PAGES[name][1](content, { org: state.org, env: state.env, environment, environments: state.envs, rerender: render })
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return
    mount(content, h('div', { class: 'card error-card', role: 'alert' }, errorText(e)))
  }
}

async function start () {
  // A sign-in link (`fyvault dev` prints one) carries the token in the fragment, which never
  // reaches a server; it is removed from the address bar at once.
  await loadOrgs()
  if (!location.hash.startsWith('#/')) history.replaceState(null, '', '#/secrets')
  await render()
}

window.addEventListener('hashchange', () => { if (state.admin) render() })

async function boot () {
  const m = location.hash.match(/^#token=([A-Za-z0-9_]+)$/)
  if (m) {
    history.replaceState(null, '', location.pathname + '#/secrets')
    signInPage('')
    await signIn(m[1], root.querySelector('.error'))
    return
  }
  try {
    const s = await api('GET', '/studio/session')
    setCsrf(s.csrf)
    state.admin = s.admin
    await start()
  } catch (e) {
    signInPage('')
  }
}

boot()
