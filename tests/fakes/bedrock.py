"""A fake Bedrock Runtime: `POST /model/{modelId}/invoke` for Titan / Nova Canvas bodies.

It checks every request's SigV4 signature the way AWS does — recomputed independently
with botocore from the method, raw path, signed headers and body it received, the frozen
test credentials and the `X-Amz-Date` the client sent — and answers 403
`InvalidSignatureException` on a mismatch. Otherwise it answers `{"images": [...]}` with
`numberOfImages` distinct valid PNGs (one for background removal).

    with FakeBedrock() as bedrock:
        config = bedrock.config()          # a ProviderConfig pointing at the fake
        ...
        bedrock.requests[-1].json()        # the body sent
        bedrock.served                     # the PNG bytes answered, in order
"""

from __future__ import annotations

import base64
import io
import re
import threading
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from imagejobs.providers.base import ProviderConfig, WeightedKey
from PIL import Image

from .upstream import FakeRequest, FakeResponse, FakeUpstream, VendorFake

ACCESS_KEY = "AKIDEXAMPLEFAKE00001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken"
REGION = "eu-west-1"
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
AUTH_RX = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]{64})"
)


def png(index: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    """A small valid PNG whose colour depends on `index` (so results can be told apart)."""
    colour = ((40 * index) % 256, (90 + 70 * index) % 256, (200 - 30 * index) % 256)
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bedrock_error(
    status: int, name: str, message: str, headers: dict[str, str] | None = None
) -> FakeResponse:
    """An error as Bedrock Runtime answers it: `{"message": …}` with the exception name in
    `x-amzn-ErrorType`, suffixed with the service's namespace URL as AWS sends it."""
    return FakeResponse(
        status,
        {"message": message},
        headers={"x-amzn-ErrorType": f"{name}:{ERROR_NAMESPACE}", **(headers or {})},
    )


class FakeBedrock(VendorFake):
    """A Bedrock Runtime on 127.0.0.1 that verifies SigV4 and serves Titan-style images."""

    def __init__(
        self,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        session_token: str | None = SESSION_TOKEN,
        region: str = REGION,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.region = region
        self.upstream = FakeUpstream()
        self._lock = threading.Lock()
        self.signature_failures: list[str] = []
        self.served: list[bytes] = []  # every image answered, in order
        self.canonical_requests: list[str] = []
        self.upstream.route("POST", r"/model/(?P<model>[^/]+)/invoke", self._invoke)

    # --- plumbing -------------------------------------------------------------------

    def config(self, **overrides: Any) -> ProviderConfig:
        """A ProviderConfig for the bedrock adapter pointing at this fake."""
        values: dict[str, Any] = {
            "name": "bedrock",
            "keys": (WeightedKey(self.access_key),),
            "aws_secret_access_key": self.secret_key,
            "aws_session_token": self.session_token or "",
            "region": self.region,
            "base_url": self.url,
            "timeout_s": 5.0,
        }
        values.update(overrides)
        return ProviderConfig(**values)

    # --- SigV4 ----------------------------------------------------------------------

    def expected_authorization(self, req: FakeRequest) -> str:
        """The Authorization header AWS would expect for `req`, recomputed with botocore
        from what was received (the headers the client says it signed, the raw path,
        the body) and this fake's credentials, at the client's `X-Amz-Date`."""
        sent = AUTH_RX.fullmatch(req.headers.get("authorization", ""))
        signed = sent.group("signed").split(";") if sent else ["host", "x-amz-date"]
        amz_date = req.headers.get("x-amz-date", "")
        headers = {name: req.headers.get(name, "") for name in signed}
        aws = AWSRequest(
            method=req.method,
            url=f"http://{req.headers.get('host', '')}{req.path}",
            data=req.body,
            headers=headers,
        )
        aws.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(self.access_key, self.secret_key, self.session_token),
            "bedrock",
            self.region,
        )
        canonical = signer.canonical_request(aws)
        self.canonical_requests.append(canonical)
        signature = signer.signature(signer.string_to_sign(aws, canonical), aws)
        scope = f"{self.access_key}/{amz_date[:8]}/{self.region}/bedrock/aws4_request"
        return (
            f"AWS4-HMAC-SHA256 Credential={scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}"
        )

    def _signature_problem(self, req: FakeRequest) -> str | None:
        sent = req.headers.get("authorization", "")
        match = AUTH_RX.fullmatch(sent)
        if match is None:
            return "missing or malformed Authorization header"
        for required in ("host", "x-amz-date", "content-type"):
            if required not in match.group("signed").split(";"):
                return f"{required} is not signed"
        if self.session_token and req.headers.get("x-amz-security-token") != self.session_token:
            return "missing or wrong X-Amz-Security-Token"
        if sent != self.expected_authorization(req):
            return "signature mismatch"
        return None

    # --- the API ----------------------------------------------------------------------

    def _invoke(self, req: FakeRequest) -> FakeResponse:
        problem = self._signature_problem(req)
        if problem is not None:
            self.signature_failures.append(problem)
            return bedrock_error(
                403,
                "InvalidSignatureException",
                f"The request signature we calculated does not match ({problem})",
            )
        body = req.json()
        task = body.get("taskType")
        if task == "BACKGROUND_REMOVAL":
            count = 1
        else:
            count = int(body.get("imageGenerationConfig", {}).get("numberOfImages", 1))
        with self._lock:
            start = len(self.served)
            data = [png(start + i) for i in range(count)]
            self.served.extend(data)
        images = [base64.b64encode(d).decode() for d in data]
        return FakeResponse(200, {"images": images, "error": None})
