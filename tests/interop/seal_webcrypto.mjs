// Seals a value to a fyvault environment key with the studio's own module, web/hpke.js
// (WebCrypto only), as the studio and the connect page do in the browser.
//
// Usage: node seal_webcrypto.mjs PUBLIC_KEY ORG_ID ENVIRONMENT SECRET_NAME < value > sealed_value
import { sealValue } from '../../web/hpke.js'

const [publicKey, orgId, environment, secretName] = process.argv.slice(2)
const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const value = new Uint8Array(Buffer.concat(chunks))
console.log(await sealValue({ publicKey, orgId, environment, secretName, value }))
