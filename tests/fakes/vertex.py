"""A fake Vertex AI (with its OAuth token endpoint) on FakeUpstream.

- `write_service_account(path)`: writes a service-account JSON with a fresh RSA key and
  `token_uri` pointing at this fake, and returns the path.
- `POST /token`: the JWT-bearer grant google-auth sends
  (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`). The
  assertion must verify with the service account's public key and name this token URI
  as audience; the fake answers `{"access_token": "ya29.fake-<n>", "expires_in":
  token_lifetime_s}` and records the decoded claims in `assertions`. Otherwise Google's
  OAuth error (`400 invalid_grant`).
- `POST /v1/projects/<p>/locations/<r>/publishers/google/models/<m>:generateContent`
  and `:predict`: the same answers as the Gemini fake, when `Authorization: Bearer`
  carries a token this fake issued (else `401 UNAUTHENTICATED`).

    with FakeVertex() as fake:
        path = fake.write_service_account(tmp_path / "sa.json")
        ProviderConfig(name="vertex", base_url=fake.url, credentials_file=str(path),
                       project="test-project", region="us-central1")
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from .gemini import GoogleImageAPI, google_error
from .upstream import FakeRequest, FakeResponse

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs assertions for Google's endpoint, whatever the key file's token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
MODEL_PATH = (
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+)"
)


class FakeVertex(GoogleImageAPI):
    """Vertex AI's publisher-model endpoints plus an OAuth2 token endpoint."""

    def __init__(self, *, token_lifetime_s: int = 3600) -> None:
        super().__init__()
        self.token_lifetime_s = token_lifetime_s
        self.issued: list[str] = []
        self.assertions: list[dict[str, Any]] = []
        self.client_email = "imagejobs-test@test-project.iam.gserviceaccount.com"
        self.public_key_pem = b""
        self._tokens = itertools.count(1)
        self.upstream.route("POST", r"/token", self._token)
        self.upstream.route("POST", MODEL_PATH + r":generateContent", self._generate)
        self.upstream.route("POST", MODEL_PATH + r":predict", self._predict)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def write_service_account(self, path: str | os.PathLike[str], project_id: str = "") -> Path:
        """Write a service-account key file whose tokens this fake issues."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_key_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        info = {
            "type": "service_account",
            "project_id": project_id or "test-project",
            "private_key_id": "fake-key-1",
            "private_key": private_pem.decode(),
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": self.token_uri,
        }
        out = Path(path)
        out.write_text(json.dumps(info))
        return out

    def _token(self, req: FakeRequest) -> FakeResponse:
        form = parse_qs(req.body.decode())
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != JWT_BEARER or not assertion:
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                assertion,
                certs=self.public_key_pem,
                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri],
            )
        except ValueError:
            return FakeResponse(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        token = f"ya29.fake-{next(self._tokens)}"
        self.assertions.append(claims)
        self.issued.append(token)
        body = {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        return FakeResponse(200, body)

    def _authorized(self, req: FakeRequest) -> FakeResponse | None:
        auth = req.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.issued:
            return None
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            "UNAUTHENTICATED",
        )

    def _generate(self, req: FakeRequest) -> FakeResponse:
        return self._authorized(req) or self.generate_content(req)

    def _predict(self, req: FakeRequest) -> FakeResponse:
        return self._authorized(req) or self.predict(req)
