"""Password hashes for the basic-auth tests, made by independent implementations
(bcrypt, argon2-cffi). Prints JSON {name: [password, hash]}."""
import json

import argon2
import bcrypt

# OWASP's minimums: bcrypt cost 10; argon2id m = 19 MiB, t = 2, p = 1.
argon = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
print(json.dumps({
    "alice": ["correct horse", bcrypt.hashpw(b"correct horse", bcrypt.gensalt(10)).decode()],
    "bob": ["battery staple", argon.hash("battery staple")],
    "zoë": ["pässwörd", argon.hash("pässwörd")],
}))
