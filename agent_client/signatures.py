"""Ed25519 verification for what the server signs: commands, key endorsements, releases, update nonces.

The agent only verifies; it never signs. Two backends give the same answers:

- ``openssl``: the OpenSSL library Python's own ``ssl`` module has already loaded (``requests``
  imports ``ssl``), called through ctypes (``EVP_DigestVerify``, the function ``cryptography``
  calls too). It costs the agent no resident memory.
- ``cryptography``: ``Ed25519PublicKey``. Importing it loads cryptography's Rust extension, with an
  OpenSSL of its own linked in: about 9 MiB of resident memory for the rest of the process,
  which is most of what an idle agent used above a bare interpreter (bench/agent.py).

The first verification picks the backend once: ``openssl`` when this is Linux, the library
Python's ``ssl`` uses can be found among the process's mappings (/proc/self/maps), its version
is the one ``ssl`` reports, it has the functions, and it passes RFC 8032's known answers (two
good signatures verify, a changed message and a changed signature do not). Anything else
(Windows, macOS, an OpenSSL without Ed25519) gets ``cryptography``. Either way no command runs
before its signature verified.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys
import threading
from typing import Any, Optional

logger = logging.getLogger("redflag.agent.signatures")

KEY_BYTES = 32
SIGNATURE_BYTES = 64
# NID_ED25519 (= EVP_PKEY_ED25519) in OpenSSL 1.1.1 and 3.x.
EVP_PKEY_ED25519 = 1087

# RFC 8032 section 7.1, tests 1 and 2: (public key, message, signature).
KNOWN_ANSWERS = (
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24"
     "655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aee"
     "b00d291612bb0c00"),
)


class InvalidSignature(Exception):
    """The signature does not verify with this key."""


class _OpenSSL:
    """The few libcrypto functions Ed25519 verification needs, with their C signatures."""

    name = "openssl"

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # already mapped by ssl: dlopen returns the same library
        lib.OpenSSL_version_num.argtypes, lib.OpenSSL_version_num.restype = [], ctypes.c_ulong
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError(f"{path} is not the OpenSSL Python's ssl module uses")
        lib.EVP_PKEY_new_raw_public_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.EVP_PKEY_new_raw_public_key.restype = ctypes.c_void_p
        lib.EVP_PKEY_free.argtypes, lib.EVP_PKEY_free.restype = [ctypes.c_void_p], None
        lib.EVP_MD_CTX_new.argtypes, lib.EVP_MD_CTX_new.restype = [], ctypes.c_void_p
        lib.EVP_MD_CTX_free.argtypes, lib.EVP_MD_CTX_free.restype = [ctypes.c_void_p], None
        lib.EVP_DigestVerifyInit.argtypes = [ctypes.c_void_p] * 5
        lib.EVP_DigestVerifyInit.restype = ctypes.c_int
        lib.EVP_DigestVerify.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                         ctypes.c_size_t]
        lib.EVP_DigestVerify.restype = ctypes.c_int
        lib.ERR_clear_error.argtypes, lib.ERR_clear_error.restype = [], None
        self.lib = lib

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        lib = self.lib
        pkey = lib.EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, None, public_key, len(public_key))
        if not pkey:
            lib.ERR_clear_error()
            raise ValueError("OpenSSL refused the Ed25519 public key")
        context = lib.EVP_MD_CTX_new()
        try:
            if not context or lib.EVP_DigestVerifyInit(context, None, None, None, pkey) != 1:
                raise ValueError("OpenSSL could not set up an Ed25519 verification")
            return lib.EVP_DigestVerify(context, signature, len(signature), message, len(message)) == 1
        finally:
            # A refused signature leaves an error on this thread's OpenSSL queue, which the next TLS
            # call on the thread would otherwise read as its own.
            lib.ERR_clear_error()
            if context:
                lib.EVP_MD_CTX_free(context)
            lib.EVP_PKEY_free(pkey)


class _Cryptography:
    name = "cryptography"

    def __init__(self) -> None:
        # Imported here, not at the top: this is the fallback, and the import costs ~9 MiB resident.
        from cryptography.exceptions import InvalidSignature as CryptographyInvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

        self.invalid = CryptographyInvalidSignature
        self.public_key = Ed25519PublicKey

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.from_public_bytes(public_key).verify(signature, message)
        except self.invalid:
            return False
        return True


def _loaded_libcrypto() -> Optional[str]:
    """The path of the libcrypto this process has mapped (Python's ssl links it); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and "/libcrypto" in line}
    except OSError:
        return None
    paths = {path for path in paths if os.path.basename(path).startswith("libcrypto.so")}
    return paths.pop() if len(paths) == 1 else None


def passes_known_answers(backend: Any) -> bool:
    for public_hex, message_hex, signature_hex in KNOWN_ANSWERS:
        public, message, signature = (bytes.fromhex(text) for text in (public_hex, message_hex, signature_hex))
        altered_signature = signature[:-1] + bytes([signature[-1] ^ 1])
        if not backend.verify(public, signature, message) or backend.verify(public, signature, message + b"\x00"):
            return False
        if backend.verify(public, altered_signature, message):
            return False
    return True


def openssl_backend() -> Optional[_OpenSSL]:
    """The ``openssl`` backend when this process can use it safely, else None."""
    path = _loaded_libcrypto()
    if path is None:
        return None
    try:
        backend = _OpenSSL(path)
        if passes_known_answers(backend):
            return backend
    except (OSError, AttributeError, ValueError) as exc:
        logger.debug("Ed25519 through %s unavailable: %s", path, exc)
        return None
    logger.warning("the OpenSSL at %s failed the Ed25519 known-answer test; using cryptography", path)
    return None


_backend: Any = None
_backend_lock = threading.Lock()


def backend() -> Any:
    """The verifier, chosen at first use (module docstring)."""
    global _backend
    if _backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = openssl_backend() or _Cryptography()
                logger.debug("Ed25519 signatures verified with %s", _backend.name)
    return _backend


class PublicKey:
    """An Ed25519 public key (32 raw bytes) that verifies signatures."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {KEY_BYTES} bytes")
        self.raw = raw

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> PublicKey:
        return cls(raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return if ``signature`` is this key's over ``message``; raise InvalidSignature otherwise."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            raise InvalidSignature(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes")
        if not backend().verify(self.raw, signature, message):
            raise InvalidSignature("the signature does not verify")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.raw.hex()[:16]}…)"
