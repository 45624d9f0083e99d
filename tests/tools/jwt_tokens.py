"""Makes keys and tokens for the jwt plugin's tests with an independent implementation
(PyJWT and cryptography). Prints JSON: the JWKS (public keys, and the HMAC secrets as
`oct` keys), a rotated JWKS, and named tokens. Usage: python3 jwt_tokens.py ISSUER"""
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

issuer = sys.argv[1]
now = int(time.time())

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
secrets = {"HS256": b"s" * 32, "HS384": b"t" * 48, "HS512": b"u" * 64}

signing = {alg: rsa_key for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")}
signing.update({"ES256": p256, "ES384": p384, "EdDSA": ed})
signing.update(secrets)


def public_jwk(alg, kid):
    key = signing[alg]
    if alg in secrets:
        jwk = HMACAlgorithm.to_jwk(key, as_dict=True)
    elif alg.startswith(("RS", "PS")):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif alg.startswith("ES"):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = kid
    return jwk


# One JWK per key: the RSA key once (kid "rsa"), each other key under its algorithm.
kid_of = {alg: ("rsa" if alg.startswith(("RS", "PS")) else alg) for alg in signing}
seen = set()
jwks = {"keys": []}
for alg, kid in kid_of.items():
    if kid not in seen:
        seen.add(kid)
        jwks["keys"].append(public_jwk(alg, kid))

claims = {"sub": "alice", "iss": issuer, "aud": "api", "exp": now + 600, "nbf": now - 5, "roles": ["reader", "writer"]}


def token(alg="RS256", kid=None, key=None, **changes):
    body = dict(claims)
    for name, value in changes.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return jwt.encode(body, key if key is not None else signing[alg], algorithm=alg,
                      headers={"kid": kid if kid is not None else kid_of[alg]})


tokens = {f"valid_{alg}": token(alg) for alg in signing}
tokens["expired"] = token(exp=now - 3600)
tokens["not_yet_valid"] = token(nbf=now + 3600)
tokens["wrong_issuer"] = token(iss="https://evil.example")
tokens["wrong_audience"] = token(aud="someone-else")
tokens["no_exp"] = token(exp=None)
good = token()
forged = token(sub="admin")
h, _, s = good.split(".")
tokens["tampered"] = ".".join([h, forged.split(".")[1], s])
tokens["unknown_kid"] = token(kid="nobody")
tokens["alg_none"] = jwt.encode(dict(claims, sub="admin"), None, algorithm="none")
# HS256 "signed" with the RSA public key's PEM and JWK, naming the RSA key: the
# classic confusion attack.
pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
hs_with_pem = jwt.api_jws.PyJWS()
hs_with_pem._algorithms["HS256"].prepare_key = lambda key: key  # PyJWT refuses PEM keys for HMAC; an attacker would not.
tokens["hs256_with_rsa_pem"] = hs_with_pem.encode(json.dumps(dict(claims, sub="admin")).encode(), pem, algorithm="HS256", headers={"kid": "rsa"})
tokens["hs256_with_rsa_jwk"] = hs_with_pem.encode(json.dumps(dict(claims, sub="admin")).encode(), json.dumps(public_jwk("RS256", "rsa")).encode(), algorithm="HS256", headers={"kid": "rsa"})

# Rotation: a new key the first JWKS does not have.
rotated = ec.generate_private_key(ec.SECP256R1())
signing["ES256-rot"] = rotated
rot_jwk = ECAlgorithm.to_jwk(rotated.public_key(), as_dict=True)
rot_jwk["kid"] = "rot-2"
tokens["rotated"] = jwt.encode(claims, rotated, algorithm="ES256", headers={"kid": "rot-2"})
rotated_jwks = {"keys": jwks["keys"] + [rot_jwk]}

print(json.dumps({"jwks": jwks, "rotated_jwks": rotated_jwks, "tokens": tokens}))
