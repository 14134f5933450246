// Small DOM helpers. Text is always set as text (textContent), never parsed as HTML, so a name
// or message holding markup is shown as the characters it is.

/** An element: h('div', { class: 'x', onclick: fn }, child, 'text', …). */
export function h (tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v)
    else if (k === 'dataset') Object.assign(el.dataset, v)
    else if (k === 'value') el.value = v
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  append(el, children)
  return el
}

function append (el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
}

/** Replaces an element's children. */
export function mount (el, ...children) {
  el.replaceChildren()
  append(el, children)
  return el
}

/** "12s ago", "3m ago", "2h ago", "5d ago"; "never" for nothing. */
export function ago (iso, now = Date.now()) {
  if (!iso) return 'never'
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return 'never'
  const s = Math.max(0, Math.round((now - t) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.floor(s / 60)}m ago`
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`
  return `${Math.floor(s / 86400)}d ago`
}

/** A local date and time for a title attribute. */
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '')

/** A modal dialog; returns { close }. `body` is a node; closing removes it. */
export function modal (title, body, { onclose } = {}) {
  const close = () => {
    overlay.remove()
    document.removeEventListener('keydown', onkey)
    if (onclose) onclose()
  }
  const onkey = (e) => { if (e.key === 'Escape') close() }
  const overlay = h('div', { class: 'overlay', onclick: (e) => { if (e.target === overlay) close() } },
    h('div', { class: 'dialog', role: 'dialog', 'aria-modal': 'true', 'aria-label': title },
      h('div', { class: 'dialog-head' },
        h('h2', {}, title),
        h('button', { class: 'icon', type: 'button', 'aria-label': 'Close', onclick: close }, '×')),
      body))
  document.addEventListener('keydown', onkey)
  document.body.append(overlay)
  const first = overlay.querySelector('textarea, input, select')
  if (first) first.focus()
  return { close, el: overlay }
}

/** A short message at the bottom of the screen. */
export function toast (text, kind = 'ok') {
  const t = h('div', { class: `toast ${kind}`, role: 'status' }, text)
  document.body.append(t)
  setTimeout(() => t.remove(), 4000)
}

/** The text of an error from the API (or anything thrown). */
export const errorText = (e) => (e && e.message) ? e.message : String(e)

/** Size in bytes of a string's UTF-8 encoding. */
export const utf8Length = (s) => new TextEncoder().encode(s).length

/** "64 KiB", "1.2 MiB". */
export function bytes (n) {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${Math.round(n / 102.4) / 10} KiB`
  return `${Math.round(n / 104857.6) / 10} MiB`
}
