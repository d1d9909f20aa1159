"""Standard Webhooks signing (https://www.standardwebhooks.com): the secret format, the
signed content and the three headers.

- A secret is written `whsec_<base64 of 24-64 random bytes>`; the HMAC key is the decoded
  bytes.
- The signed content is `<webhook-id>.<webhook-timestamp>.<exact body bytes>`, signed with
  HMAC-SHA256; `webhook-signature` is a space-separated list of `v1,<base64>`, one per
  secret, so that a receiver holding either key verifies during a rotation.
- `webhook-timestamp` is the attempt's time in integer Unix seconds (receivers refuse old
  ones), so each attempt is signed anew; the id and the body stay the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
NEW_SECRET_BYTES = 32


def parse_secret(text: str) -> bytes:
    """The HMAC key of a `whsec_...` secret; ValueError (never quoting it) when it is not
    one."""
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
    encoded = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a webhook secret holds {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return key


def new_secret() -> str:
    """A fresh random secret in the `whsec_` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_SECRET_BYTES)).decode()


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the body under `key`."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    keys: tuple[bytes, ...], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed with every key."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, webhook_id, timestamp, body) for k in keys),
    }
