// Seals a value to a fyvault environment key with @hpke/core: the recipe of docs/vault.md,
// "Sealing a value yourself".
//
// Usage: node seal.mjs PUBLIC_KEY ORG_ID ENVIRONMENT SECRET_NAME < value > sealed_value
//   PUBLIC_KEY is `public_key` of GET /orgs/ORG_ID/environments/ENVIRONMENT/public-key.
import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from '@hpke/core'

const [publicKey, orgId, environment, secretName] = process.argv.slice(2)
const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Aes256Gcm()
})
const utf8 = (s) => new TextEncoder().encode(s)
const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const value = Buffer.concat(chunks)

const recipientPublicKey = await suite.kem.deserializePublicKey(Buffer.from(publicKey, 'base64'))
const sender = await suite.createSenderContext({
  recipientPublicKey,
  info: utf8('fyvault sealed secret v1')
})
const aad = utf8(`fyvault-v1|${orgId}|${environment}|${secretName}`)
const ciphertext = await sender.seal(value, aad)
const sealed = Buffer.concat([Buffer.from(sender.enc), Buffer.from(ciphertext)])
console.log(sealed.toString('base64'))
