// A .env paste, read as the studio's bulk import reads it: `#` lines and blank lines ignored,
// `export ` prefixes and dotenv quoting understood ('single' literal, "double" with \n \r \t \" \\
// escapes, both may span lines; unquoted values end at ` #`). Anything else is listed as
// malformed with its line number — never with its text, which may hold a value.

export const NAME_RE = /^[A-Z_][A-Z0-9_]{0,127}$/
export const MAX_VALUE_BYTES = 64 * 1024
/** The largest paste the studio reads (the vault's body limit is 1 MiB as well). */
export const MAX_PASTE_BYTES = 1024 * 1024

const ESCAPES = { n: '\n', r: '\r', t: '\t', '"': '"', '\\': '\\' }

/**
 * Parses `text`. Returns { entries: [{ name, value, line }], malformed: [{ line, name?, reason }] }.
 * Names must follow the vault's rule; a name given twice is malformed on its second line.
 */
export function parseDotenv (text) {
  const entries = []
  const malformed = []
  const seen = new Map()
  const lines = text.replace(/\r\n?/g, '\n').split('\n')
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1
    let line = lines[i].replace(/^[\s\uFEFF]+/, '')
    if (line === '' || line.startsWith('#')) continue
    if (/^export\s+/.test(line)) line = line.replace(/^export\s+/, '')
    const eq = line.indexOf('=')
    if (eq < 0) {
      malformed.push({ line: lineNo, reason: 'there is no = sign' })
      continue
    }
    const name = line.slice(0, eq).trim()
    let rest = line.slice(eq + 1).replace(/^[ \t]+/, '')
    let value
    let endLine = i
    if (rest.startsWith('"') || rest.startsWith("'")) {
      const q = rest[0]
      let out = ''
      let closed = false
      let j = 1
      let cur = rest
      for (;;) {
        while (j < cur.length) {
          const c = cur[j]
          if (q === '"' && c === '\\' && j + 1 < cur.length) {
            const e = cur[j + 1]
            out += ESCAPES[e] !== undefined ? ESCAPES[e] : '\\' + e
            j += 2
            continue
          }
          if (c === q) { closed = true; break }
          out += c
          j++
        }
        if (closed || endLine + 1 >= lines.length) break
        endLine++
        out += '\n'
        cur = lines[endLine]
        j = 0
      }
      if (!closed) {
        malformed.push({ line: lineNo, name: NAME_RE.test(name) ? name : undefined, reason: `the ${q === '"' ? 'double' : 'single'} quote is never closed` })
        i = lines.length
        continue
      }
      const after = cur.slice(j + 1).trim()
      i = endLine
      if (after !== '' && !after.startsWith('#')) {
        malformed.push({ line: lineNo, name: NAME_RE.test(name) ? name : undefined, reason: 'text after the closing quote' })
        continue
      }
      value = out
    } else {
      const hash = rest.search(/\s#/)
      if (hash >= 0) rest = rest.slice(0, hash)
      value = rest.replace(/[ \t]+$/, '')
    }
    if (!NAME_RE.test(name)) {
      malformed.push({ line: lineNo, reason: 'the name must be A–Z, 0–9 and _, not starting with a digit (at most 128)' })
      continue
    }
    if (value === '') {
      malformed.push({ line: lineNo, name, reason: 'the value is empty' })
      continue
    }
    const size = new TextEncoder().encode(value).length
    if (size > MAX_VALUE_BYTES) {
      malformed.push({ line: lineNo, name, reason: `the value is ${Math.ceil(size / 1024)} KiB; the limit is 64 KiB` })
      continue
    }
    if (seen.has(name)) {
      malformed.push({ line: lineNo, name, reason: `${name} is already set on line ${seen.get(name)}` })
      continue
    }
    seen.set(name, lineNo)
    entries.push({ name, value, line: lineNo })
  }
  return { entries, malformed }
}
