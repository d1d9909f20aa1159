"""The three kinds of image job, and the names each one goes by on the wire."""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    """A job's kind; the value is the REST path segment (`/v1/async/images/<value>`)."""

    GENERATION = "generations"
    EDIT = "edits"
    VARIATION = "variations"

    @property
    def request_type(self) -> str:
        """The `extra_fields.request_type` string the contract uses for this kind."""
        return _REQUEST_TYPES[self]

    @classmethod
    def parse(cls, value: str) -> Kind:
        """The kind for a path segment; raises ValueError for anything else."""
        return cls(value)


_REQUEST_TYPES = {
    Kind.GENERATION: "image_generation",
    Kind.EDIT: "image_edit",
    Kind.VARIATION: "image_variation",
}
