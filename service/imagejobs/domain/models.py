"""`ModelRef`: a request's `provider/model` string, parsed once at the edge.

The contract names a model as `provider/model` (`openai/gpt-image-1`,
`huggingface/hf-inference/black-forest-labs/FLUX.1-schnell`): the provider is everything
before the first `/`, the model (as the provider knows it) everything after. Requests are
validated into a `ModelRef` (api/requests.py); records store it as that same string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer


@dataclass(frozen=True, order=True)
class ModelRef:
    """A provider and one of its models."""

    provider: str
    name: str

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """`"openai/gpt-image-1"` -> ModelRef("openai", "gpt-image-1"); ValueError unless
        both parts are non-empty (the provider is not checked against the known ones)."""
        provider, sep, name = text.partition("/")
        if not sep or not provider or not name.strip():
            raise ValueError(f"not a provider/model string: {text!r}")
        return cls(provider=provider, name=name)

    def __str__(self) -> str:
        return f"{self.provider}/{self.name}"


def _parse(value: object) -> object:
    return ModelRef.parse(value) if isinstance(value, str) else value


ModelField = Annotated[ModelRef, BeforeValidator(_parse), PlainSerializer(str, return_type=str)]
"""A pydantic field holding a `ModelRef`, read and written as its `provider/model` text."""
