"""The model listing (`GET /v1/async/images/models`, gRPC `ListModels`): the configured
providers and their model families from the model catalogue (providers/catalogue.py),
with each family's status on the day asked and what it supports. Pure.

A caller with a virtual key sees what the key may use: only its allowed providers, and in
each family only the known models its `allowed_models` patterns allow (a family whose
known models are all refused is left out; an open-ended family, one without known models,
stays). Retired families are listed too, with their replacement, so that a form can say
what to use instead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from datetime import date

from google.protobuf import json_format

from imagejobs.domain.keys import KeyPolicy
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.catalogue import Catalogue, Family
from imagejobs.v1 import jobs_pb2

# the fields the message takes from the family as they are
_AS_IS = {
    "pattern",
    "replacement",
    "n_per_call",
    "sizes",
    "aspect_ratios",
    "reason",
    "source",
    "note",
}


def family_message(family: Family, day: date, policy: KeyPolicy | None) -> jobs_pb2.ModelFamily:
    """One family as the `ModelFamily` message, its status as of `day`."""
    models = [m for m in family.models if policy is None or policy.allows(ModelRef.parse(m))]
    kinds = family.kinds
    return jobs_pb2.ModelFamily(
        **family.model_dump(include=_AS_IS),
        models=models,
        status=family.status_on(day).value,
        sunset=family.sunset.isoformat() if family.sunset else "",
        generation=Kind.GENERATION in kinds,
        edit=Kind.EDIT in kinds,
        variation=Kind.VARIATION in kinds,
    )


def _provider_allowed(name: str, policy: KeyPolicy | None) -> bool:
    if policy is None:
        return True
    if policy.allowed_providers and name not in policy.allowed_providers:
        return False
    # a model pattern can only match this provider's models if its provider part can
    return not policy.allowed_models or any(
        fnmatch.fnmatchcase(name, pattern.split("/", 1)[0]) for pattern in policy.allowed_models
    )


def listing(
    catalogue: Catalogue,
    providers: Iterable[str],
    *,
    day: date,
    max_n: int,
    policy: KeyPolicy | None = None,
) -> jobs_pb2.ListModelsResponse:
    """The listing of `providers` (the configured ones) as `policy`'s caller sees it."""
    response = jobs_pb2.ListModelsResponse(
        catalogue_date=catalogue.read_on.isoformat(), max_n=max_n
    )
    for name in sorted(set(providers)):
        if not _provider_allowed(name, policy):
            continue
        entry = response.providers.add(name=name)
        for family in catalogue.of(name):
            message = family_message(family, day, policy)
            if family.models and not message.models:
                continue  # every known model of it is refused to this key
            entry.families.append(message)
    return response


def listing_json(response: jobs_pb2.ListModelsResponse) -> bytes:
    """The listing as the REST API prints it: field names as in the proto, every field
    present (empty lists, `false`, `0`), so that clients need no defaults of their own."""
    return json_format.MessageToJson(
        response,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=None,
    ).encode()
