"""Seals a value to a fyvault environment key with pyhpke: the recipe of docs/vault.md,
"Sealing a value yourself".

Usage: seal.py PUBLIC_KEY ORG_ID ENVIRONMENT SECRET_NAME < value > sealed_value
  PUBLIC_KEY is `public_key` of GET /orgs/ORG_ID/environments/ENVIRONMENT/public-key.
  FYVAULT_TEST_INFO / FYVAULT_TEST_AAD replace the info / AAD (tests use them to seal wrongly).
"""
import base64
import os
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

public_key, org_id, environment, secret_name = sys.argv[1:5]
suite = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
)
info = b"fyvault sealed secret v1"
aad = f"fyvault-v1|{org_id}|{environment}|{secret_name}".encode()
info = os.environb.get(b"FYVAULT_TEST_INFO", info)
aad = os.environb.get(b"FYVAULT_TEST_AAD", aad)

pkr = KEMKey.from_pyca_cryptography_key(
    X25519PublicKey.from_public_bytes(base64.b64decode(public_key))
)
enc, sender = suite.create_sender_context(pkr, info=info)
ciphertext = sender.seal(sys.stdin.buffer.read(), aad=aad)
print(base64.b64encode(enc + ciphertext).decode())
