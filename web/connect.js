// The end-user connect page (`/connect/{token}`): the user pastes their own key for one secret
// of one app; it is sealed in this browser to the app's environment key and posted once. The
// link's token is the credential (single use, 1 hour); the page sends no cookie.
import { h, mount, utf8Length, bytes, when } from './ui.js'
import { sealValue } from './hpke.js'

const root = document.getElementById('app')
const token = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '')
const url = `/api/v1/connect/${encodeURIComponent(token)}`
const MAX_VALUE_BYTES = 64 * 1024

async function call (method, body) {
  const resp = await fetch(url, {
    method,
    headers: body ? { 'Content-Type': 'application/json', Accept: 'application/json' } : { Accept: 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
    credentials: 'omit',
    cache: 'no-store'
  })
  let data = null
  try { data = await resp.json() } catch { data = null }
  return { status: resp.status, data }
}

const MESSAGES = {
  link_used: ['This link has already been used', 'Each link works once. Ask the app for a new one if you need to change your key.'],
  link_expired: ['This link has expired', 'Links are valid for one hour. Ask the app for a new one.'],
  link_unknown: ['This link is not valid', 'Check that you opened the whole link, or ask the app for a new one.']
}

function ended (code, fallback) {
  const [title, text] = MESSAGES[code] || ['This link cannot be used', fallback || 'Ask the app for a new link.']
  mount(root, h('div', { class: 'connect-state', id: 'link-state', dataset: { code: code || 'error' } },
    h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'fy'), 'fyvault'),
    h('h1', {}, title), h('p', { class: 'muted' }, text)))
}

async function main () {
  let link
  try {
    const r = await call('GET')
    if (r.status !== 200) return ended(r.data && r.data.error ? r.data.error.code : '', r.data && r.data.error ? r.data.error.message : '')
    link = r.data
  } catch {
    return ended('', 'The vault could not be reached. Try again in a moment.')
  }
  const input = h('textarea', { id: 'key', rows: 3, autocomplete: 'off', spellcheck: 'false', placeholder: 'Paste your key', 'aria-label': `Your ${link.secret_name}` })
  const msg = h('p', { class: 'error', role: 'alert', id: 'connect-error' })
  const go = h('button', { class: 'primary', type: 'submit', id: 'connect-submit' }, 'Seal and connect')
  const submit = async (e) => {
    e.preventDefault()
    mount(msg)
    const value = input.value.trim()
    if (!value) return mount(msg, 'Paste your key first.')
    if (utf8Length(value) > MAX_VALUE_BYTES) return mount(msg, `The key is ${bytes(utf8Length(value))}; the limit is 64 KiB.`)
    go.disabled = true
    try {
      const sealed = await sealValue({ publicKey: link.public_key, orgId: link.org_id, environment: link.environment, secretName: link.secret_name, value })
      input.value = ''
      const r = await call('POST', { sealed_value: sealed })
      if (r.status === 200) {
        mount(root, h('div', { class: 'connect-state', id: 'link-state', dataset: { code: 'connected' } },
          h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'fy'), 'fyvault'),
          h('h1', {}, 'Connected'),
          h('p', { class: 'muted' }, `Your ${link.secret_name} is stored, sealed. You can close this page.`)))
        return
      }
      const code = r.data && r.data.error ? r.data.error.code : ''
      if (MESSAGES[code]) return ended(code)
      mount(msg, r.data && r.data.error ? r.data.error.message : `The vault answered ${r.status}.`)
    } catch (err) {
      mount(msg, err && err.message ? err.message : String(err))
    }
    go.disabled = false
  }
  mount(root, h('form', { class: 'connect-form', onsubmit: submit },
    h('div', { class: 'brand' }, h('span', { class: 'logo' }, 'fy'), 'fyvault'),
    h('h1', {}, 'Connect your API key'),
    h('p', {}, 'The app needs your ', h('code', {}, link.secret_name), ' (for user ', h('code', {}, link.user_id), ').'),
    h('p', { class: 'muted' }, 'Your key is sealed in this browser before it is sent: the app’s developers and the vault cannot read it; only the app’s own hosts can.'),
    h('label', { for: 'key' }, `Your ${link.secret_name}`), input, msg, go,
    h('p', { class: 'muted small' }, `This link works once, until ${when(link.expires_at)}.`)))
  input.focus()
}

main()
