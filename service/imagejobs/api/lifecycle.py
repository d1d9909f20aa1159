"""What the model catalogue (providers/catalogue.py) says about a request's models, at
submit: a retired model or fallback is a 400 `model_retired` naming its replacement,
before anything is kept; a deprecated one is accepted with a warning, which the job
record keeps and the completed job shows in `result.extra_fields.warnings`. Pure apart
from the log line for a deprecated model, written once per model per process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime

from imagejobs.domain.errors import ErrorCode, InvalidRequest
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.catalogue import Catalogue

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # deprecated models this process has logged already


def utc_today() -> date:
    """Today's date in UTC (the day a model's sunset is compared with)."""
    return datetime.now(UTC).date()


def lifecycle_warnings(
    catalogue: Catalogue, day: date, kind: Kind, models: Sequence[ModelRef]
) -> tuple[str, ...]:
    """The warnings for the deprecated ones of `models` (the primary, then the fallbacks)
    on `day`; InvalidRequest 400 `model_retired` (param `model` or `fallbacks`) for the
    first retired one."""
    warnings: list[str] = []
    for index, ref in enumerate(models):
        lifecycle = catalogue.lifecycle(ref, day)
        if lifecycle.retired:
            raise InvalidRequest(
                lifecycle.message(),
                code=ErrorCode.MODEL_RETIRED,
                param="fallbacks" if index else "model",
                provider=ref.provider,
                model=ref.name,
                request_type=kind.request_type,
            )
        if lifecycle.deprecated:
            warnings.append(lifecycle.message())
            if str(ref) not in _WARNED:
                _WARNED.add(str(ref))
                log.warning("a job asked for a deprecated model: %s", lifecycle.message())
    return tuple(dict.fromkeys(warnings))  # a model named twice is warned of once
