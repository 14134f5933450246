// web/dotenv.js: the studio's .env paste reader (runs in Node as it is).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseDotenv } from '../../web/dotenv.js'

test('comments, blanks, export and quoting', () => {
  const { entries, malformed } = parseDotenv([
    '# a comment',
    '',
    'export A=plain value # trailing comment',
    "B='it''s'",
    'C="line1\\nline2 \\"q\\" \\\\"',
    "D='multi",
    "line' # ok",
    '  E=#not-a-comment',
    'F="a # b"'
  ].join('\r\n'))
  assert.deepEqual(malformed, [{ line: 4, name: 'B', reason: 'text after the closing quote' }])
  assert.deepEqual(entries.map((e) => [e.name, e.value, e.line]), [
    ['A', 'plain value', 3],
    ['C', 'line1\nline2 "q" \\', 5],
    ['D', 'multi\nline', 6],
    ['E', '#not-a-comment', 8],
    ['F', 'a # b', 9]
  ])
})

test('malformed lines name their line and never their text', () => {
  const { entries, malformed } = parseDotenv('GOOD=1\n<b>X</b>=v\nnot a pair\nEMPTY=\nGOOD=2\nBIG=' + 'x'.repeat(70000) + '\nOPEN="never closed\nLATER=1')
  assert.deepEqual(entries.map((e) => e.name), ['GOOD'])
  assert.deepEqual(malformed.map((m) => [m.line, m.name]), [[2, undefined], [3, undefined], [4, 'EMPTY'], [5, 'GOOD'], [6, 'BIG'], [7, 'OPEN']])
  assert.match(malformed[3].reason, /line 1/)
  assert.match(malformed[4].reason, /69 KiB; the limit is 64 KiB/)
  for (const m of malformed) assert.ok(!m.reason.includes('<b>') && !m.reason.includes('xxxx'))
})
