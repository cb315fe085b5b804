"""An independent implementation of the encrypted-field format of docs/wire-format.md
("Encrypted fields"), on the `cryptography` package's AESGCM, written from the document.

    field_encryption.py decrypt KEY_B64 EVENT_ID EVENT_TYPE FIELD VALUE
        prints {"key_kind": 1, "key_id": "...", "plaintext": "<the field's JSON>"}
    field_encryption.py encrypt KEY_ID KEY_B64 EVENT_ID EVENT_TYPE FIELD PLAINTEXT_JSON
        prints {"value": "<the field's JSON string content>"}

VALUE is the content of the field's JSON string (the base64 text). Exits non-zero with a
message on stderr when the value is refused.
"""
import base64
import json
import os
import struct
import sys
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
RING_KEY = 1
NONCE_LEN = 12
TAG_LEN = 16


def prefixed(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">H", len(data)) + data


def associated_data(header: bytes, event_id: str, event_type: str, field: str) -> bytes:
    canonical_id = str(uuid.UUID(event_id))  # 36 characters, lowercase, hyphenated
    return header + prefixed(canonical_id) + prefixed(event_type) + prefixed(field)


def decrypt(key_b64, event_id, event_type, field, value) -> dict:
    key = base64.b64decode(key_b64, validate=True)
    data = base64.b64decode(value, validate=True)
    if len(data) < 4 or data[0] != FORMAT_VERSION or data[1] not in (1, 2):
        raise ValueError("not a version 1 envelope")
    (id_len,) = struct.unpack(">H", data[2:4])
    header, rest = data[: 4 + id_len], data[4 + id_len :]
    if len(rest) < NONCE_LEN + TAG_LEN:
        raise ValueError("too short")
    nonce, sealed = rest[:NONCE_LEN], rest[NONCE_LEN:]
    aad = associated_data(header, event_id, event_type, field)
    plaintext = AESGCM(key).decrypt(nonce, sealed, aad)
    return {
        "key_kind": data[1],
        "key_id": header[4:].decode("utf-8"),
        "plaintext": plaintext.decode("utf-8"),
    }


def encrypt(key_id, key_b64, event_id, event_type, field, plaintext) -> dict:
    key = base64.b64decode(key_b64, validate=True)
    encoded_id = key_id.encode("utf-8")
    header = bytes([FORMAT_VERSION, RING_KEY]) + struct.pack(">H", len(encoded_id)) + encoded_id
    nonce = os.urandom(NONCE_LEN)
    aad = associated_data(header, event_id, event_type, field)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), aad)
    return {"value": base64.b64encode(header + nonce + sealed).decode("ascii")}


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "decrypt":
        print(json.dumps(decrypt(*args)))
    elif mode == "encrypt":
        print(json.dumps(encrypt(*args)))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
