"""Secrets at rest: API-token hashes (scrypt) and SCRAM-SHA-256 password verifiers.

Neither form lets a reader of the catalog recover the secret. A token is ``mxt_<id>_<secret>``:
the id finds its record, the secret is checked against a salted scrypt hash. A password is kept
as PostgreSQL keeps it, ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802
and 7677), which is what a PostgreSQL-wire server needs to run SCRAM with a client, and enough
to check a password given in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

TOKEN_PREFIX = "mxt"
# scrypt's cost: 16 MiB and a few tens of milliseconds per check (OWASP's minimum is n=2**17
# with r=8 for passwords; a token's secret is 256 random bits, so no guessing is feasible and
# the hash only has to be one-way).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def new_token() -> tuple[str, str, str]:
    """``(token, id, secret)`` of a fresh random token."""
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}_{token_id}_{secret}", token_id, secret


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    prefix, _, rest = token.strip().partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        return None
    return token_id, secret


def hash_secret(secret: str) -> str:
    """A salted scrypt hash: ``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (a ``hash_secret`` result); constant time."""
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        mine = _scrypt(secret, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(mine, base64.b64decode(digest))
    except ValueError:
        return False


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def saslprep(text: str) -> str:
    """RFC 4013's SASLprep of a password, as PostgreSQL applies it: the text unchanged when it
    is not a valid SASLprep string (so any password still works)."""
    if text.isascii():
        return text  # SASLprep maps nothing in ASCII; its control characters make it fail
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    norm = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if not norm or any(f(c) for c in norm for f in prohibited):
        return text
    if any(stringprep.in_table_d1(c) for c in norm) and (
        any(stringprep.in_table_d2(c) for c in norm)
        or not (stringprep.in_table_d1(norm[0]) and stringprep.in_table_d1(norm[-1]))
    ):
        return text
    return norm


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass(frozen=True)
class ScramVerifier:
    """A SCRAM-SHA-256 password verifier (RFC 5802/7677): what a server keeps of a password.

    Example:
        >>> v = ScramVerifier.make("s3cret", salt=b"0123456789abcdef")
        >>> v.verify_password("s3cret"), v.verify_password("guess")
        (True, False)
        >>> str(v).startswith("SCRAM-SHA-256$4096:")
        True
    """

    salt: bytes = field(repr=False)
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @classmethod
    def make(
        cls, password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
    ) -> ScramVerifier:
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = cls.salted_password(password, salt, iterations)
        stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        return cls(salt, iterations, stored, _hmac(salted, b"Server Key"))

    @staticmethod
    def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
        """``Hi(Normalize(password), salt, i)``: PBKDF2-HMAC-SHA-256 of the SASLprep'd text."""
        return hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Read PostgreSQL's ``SCRAM-SHA-256$<i>:<salt>$<StoredKey>:<ServerKey>`` form."""
        try:
            algo, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if algo != "SCRAM-SHA-256":
                raise ValueError(algo)
            d = base64.b64decode
            return cls(d(salt), int(iterations), d(stored), d(server))
        except ValueError as e:
            raise ValueError("not a SCRAM-SHA-256 verifier") from e

    def __str__(self) -> str:
        return (
            f"SCRAM-SHA-256${self.iterations}:{_b64(self.salt)}$"
            f"{_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    def verify_password(self, password: str) -> bool:
        """Whether ``password`` (in clear) is the one this verifier was made of."""
        salted = self.salted_password(password, self.salt, self.iterations)
        stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        return hmac.compare_digest(stored, self.stored_key)

    def verify_proof(self, auth_message: bytes, client_proof: bytes) -> bytes | None:
        """The server's side of a SCRAM exchange: the ``ServerSignature`` to send back when
        ``client_proof`` is right for ``auth_message``
        (``client-first-bare,server-first,client-final-without-proof``), else None."""
        signature = _hmac(self.stored_key, auth_message)
        if len(client_proof) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(client_proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key):
            return None
        return _hmac(self.server_key, auth_message)
