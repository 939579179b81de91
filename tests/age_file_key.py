"""The file key of an age v1 file, unwrapped from its X25519 stanza with an
identity: an implementation independent of Cloister's (Python's
cryptography), so that tests and the jobs benchmark can hand the job engine
a file key the way the KMS will, for files made by any age implementation.

    python3 tests/age_file_key.py IDENTITY_FILE AGE_FILE OUT   # writes the 16 raw bytes to OUT
"""
import base64
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32_data(s):
    """The bytes of a Bech32 string (the checksum is not checked: the caller's own key)."""
    s = s.lower()
    acc = bits = 0
    out = bytearray()
    for c in s[s.rindex("1") + 1:-6]:
        acc = (acc << 5) | BECH32.index(c)
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def unb64(s):
    return base64.b64decode(s + "=" * (-len(s) % 4))


def unwrap_file_key(age_file, identity_file):
    """The 16-byte file key of AGE_FILE (a path) from its X25519 stanza for the identity in IDENTITY_FILE."""
    with open(identity_file) as f:
        secret = bech32_data([ln for ln in f.read().splitlines() if ln.startswith("AGE-SECRET-KEY-1")][0])
    sk = X25519PrivateKey.from_private_bytes(secret)
    pub = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with open(age_file, "rb") as f:
        head = f.read(1 << 20)
    lines = head.split(b"\n")
    assert lines[0] == b"age-encryption.org/v1", "not an age v1 file"
    for i, ln in enumerate(lines):
        if ln.startswith(b"---"):
            break
        if not ln.startswith(b"-> X25519 "):
            continue
        share = unb64(ln.split()[2].decode())
        shared = sk.exchange(X25519PublicKey.from_public_bytes(share))
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=share + pub,
                   info=b"age-encryption.org/v1/X25519").derive(shared)
        try:
            return ChaCha20Poly1305(key).decrypt(b"\0" * 12, unb64(lines[i + 1].decode()), None)
        except Exception:
            continue
    raise ValueError("no X25519 stanza of the file is for this identity")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: age_file_key.py IDENTITY_FILE AGE_FILE OUT")
    with open(sys.argv[3], "wb") as out:
        out.write(unwrap_file_key(sys.argv[2], sys.argv[1]))
