"""The model catalogue: the shipped data is dated, sourced and consistent with the
adapters; retired models (primary or fallback) are refused at validation with 400
`model_retired` naming the replacement; deprecated ones pass with a warning, logged once
per model; a deployment's config extends or overrides the catalogue; the listing shows
the configured providers as a key may see them."""

from __future__ import annotations

import importlib
import json
import logging
from datetime import date
from typing import Any

import pytest
from imagejobs.api import lifecycle as lifecycle_module
from imagejobs.api.models import listing, listing_json
from imagejobs.api.requests import Limits, from_json_object
from imagejobs.config import Settings, load_settings
from imagejobs.domain.errors import ConfigError, InvalidRequest
from imagejobs.domain.keys import KeyPolicy
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.catalogue import Catalogue, Family, Status
from imagejobs.providers.registry import KNOWN_PROVIDERS, MODULES

BUILTIN = Catalogue.builtin()
READ_ON = BUILTIN.read_on


def status(model: str, day: date = READ_ON, catalogue: Catalogue = BUILTIN) -> Status | None:
    return catalogue.lifecycle(ModelRef.parse(model), day).status


# --- the shipped data -----------------------------------------------------------------------


def test_the_catalogue_is_dated_and_covers_every_provider() -> None:
    assert date(2026, 12, 1) == READ_ON
    assert set(BUILTIN.families) == KNOWN_PROVIDERS


def test_every_family_says_where_its_facts_came_from_and_what_replaces_it() -> None:
    for provider, families in BUILTIN.families.items():
        for family in families:
            where = f"{provider}/{family.pattern}"
            assert family.source, where
            if family.status is not Status.CURRENT:
                assert family.reason, where
            if family.status is Status.RETIRED:
                assert family.replacement, where


def test_every_replacement_is_itself_served() -> None:
    for families in BUILTIN.families.values():
        for family in families:
            if family.replacement and "*" not in family.replacement:
                assert status(family.replacement) in (Status.CURRENT, None), family.replacement


def test_every_known_model_belongs_to_the_family_that_lists_it() -> None:
    """Families are matched in order: a known model caught by an earlier family is a
    mistake in the data (it would get the other family's status)."""
    for provider, families in BUILTIN.families.items():
        for family in families:
            for model in family.models:
                ref = ModelRef.parse(model)
                assert ref.provider == provider, model
                assert BUILTIN.family(ref) == family, model


def test_a_family_states_only_operations_its_adapter_has() -> None:
    for provider, families in BUILTIN.families.items():
        adapter_ops = importlib.import_module(MODULES[provider]).build.operations
        for family in families:
            assert family.kinds <= adapter_ops, f"{provider}/{family.pattern}"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gemini/imagen-4.0-generate-001", Status.RETIRED),
        ("gemini/imagen-4.0-ultra-generate-001", Status.RETIRED),
        ("huggingface/nebius/black-forest-labs/FLUX.1-schnell", Status.RETIRED),
        ("openai/dall-e-2", Status.RETIRED),
        ("openai/gpt-image-1", Status.RETIRED),
        ("vertex/imagen-4.0-generate-001", Status.DEPRECATED),
        ("vertex/imagen-3.0-capability-001", Status.DEPRECATED),
        ("gemini/gemini-3.1-flash-image", Status.CURRENT),
        ("openai/gpt-image-2.6-sunburst", Status.CURRENT),
        ("nebius/black-forest-labs/flux-schnell", Status.CURRENT),  # the direct provider
        ("huggingface/together/black-forest-labs/FLUX.1-schnell", Status.CURRENT),
        ("openai/a-model-from-next-week", None),  # unknown: allowed
    ],
)
def test_the_issues_models(model: str, expected: Status | None) -> None:
    assert status(model) is expected


def test_a_deprecated_family_is_retired_from_its_sunset_on() -> None:
    vertex = "vertex/imagen-4.0-generate-001"
    assert status(vertex, date(2026, 12, 31)) is Status.DEPRECATED
    assert status(vertex, date(2027, 1, 1)) is Status.RETIRED


def test_the_message_names_the_replacement_with_the_matched_name() -> None:
    ref = ModelRef.parse("huggingface/nebius/black-forest-labs/FLUX.1-schnell")
    message = BUILTIN.lifecycle(ref, READ_ON).message()
    assert message.startswith(f"model {ref} is retired (since 2026-07-01): Hugging Face")
    assert message.endswith("use huggingface/together/black-forest-labs/FLUX.1-schnell instead")


def test_overrides_come_first_and_replace_a_family_of_the_same_pattern() -> None:
    own = Family(pattern="imagen-*", status=Status.CURRENT, source="our private proxy")
    extra = Family(pattern="old-*", status=Status.RETIRED, replacement="mock/new", reason="x")
    merged = BUILTIN.with_overrides({"gemini": [own], "mock": [extra]})
    assert status("gemini/imagen-4.0-generate-001", catalogue=merged) is Status.CURRENT
    assert [f.pattern for f in merged.of("gemini")].count("imagen-*") == 1
    assert status("mock/old-1", catalogue=merged) is Status.RETIRED
    assert status("mock/other", catalogue=merged) is Status.CURRENT  # the shipped `*`


def test_an_invalid_catalogue_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid model catalogue"):
        Catalogue.parse('read_on = 2026-12-01\n[[providers.mock]]\npattern = "*"\nstatus = "gone"')


# --- validation: the retired check and the warnings -----------------------------------------


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "a lighthouse", **extra}


def test_a_retired_model_is_refused_naming_its_replacement() -> None:
    with pytest.raises(InvalidRequest) as info:
        from_json_object(Kind.GENERATION, body("gemini/imagen-4.0-generate-001"), Limits())
    err = info.value.body()
    assert (err.status_code, err.code, err.param) == (400, "model_retired", "model")
    assert "use gemini/gemini-3.1-flash-image instead" in err.message
    assert (err.provider, err.model, err.request_type) == (
        "gemini",
        "imagen-4.0-generate-001",
        "image_generation",
    )


def test_a_retired_fallback_is_refused_too() -> None:
    fields = body("mock/m", fallbacks=["mock/m2", "huggingface/nebius/acme/flux"])
    with pytest.raises(InvalidRequest) as info:
        from_json_object(Kind.GENERATION, fields, Limits())
    err = info.value.body()
    assert (err.code, err.param, err.provider) == ("model_retired", "fallbacks", "huggingface")
    assert "use huggingface/together/acme/flux instead" in err.message


def test_a_deprecated_model_passes_with_a_warning_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle_module, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger=lifecycle_module.__name__)
    for _ in range(2):
        request = from_json_object(
            Kind.GENERATION, body("vertex/imagen-4.0-generate-001"), Limits()
        )
    [warning] = request.warnings
    assert warning.startswith("model vertex/imagen-4.0-generate-001 is deprecated (retired on")
    assert "use vertex/gemini-2.5-flash-image instead" in warning
    logged = [r for r in caplog.records if "deprecated model" in r.getMessage()]
    assert len(logged) == 1


def test_the_day_decides_and_current_models_carry_no_warning() -> None:
    later = Limits(today=lambda: date(2027, 1, 1))
    with pytest.raises(InvalidRequest, match="retired"):
        from_json_object(Kind.GENERATION, body("vertex/imagen-4.0-generate-001"), later)
    request = from_json_object(Kind.GENERATION, body("gemini/gemini-3.1-flash-image"), Limits())
    assert request.warnings == ()


# --- the config's catalogue ----------------------------------------------------------------


def test_the_config_extends_and_overrides_the_catalogue(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[catalogue.mock]]\npattern = "legacy-*"\nstatus = "retired"\n'
        'replacement = "mock/image-2"\nreason = "we turned it off"\n'
        '[[catalogue.gemini]]\npattern = "imagen-*"\nstatus = "current"\n'
    )
    catalogue = load_settings(path).model_catalogue()
    assert status("mock/legacy-1", catalogue=catalogue) is Status.RETIRED
    assert status("gemini/imagen-4.0-generate-001", catalogue=catalogue) is Status.CURRENT
    limits = Limits(catalogue=catalogue)
    with pytest.raises(InvalidRequest, match="we turned it off; use mock/image-2 instead"):
        from_json_object(Kind.GENERATION, body("mock/legacy-1"), limits)


def test_the_config_refuses_a_catalogue_of_an_unknown_provider() -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        Settings.model_validate({"catalogue": {"nosuch": [{"pattern": "*", "status": "current"}]}})


# --- the listing --------------------------------------------------------------------------


def test_the_listing_shows_the_configured_providers_only() -> None:
    response = listing(BUILTIN, ["mock", "gemini"], day=READ_ON, max_n=10)
    doc = json.loads(listing_json(response))
    assert doc["catalogue_date"] == "2026-12-01" and doc["max_n"] == 10
    assert [p["name"] for p in doc["providers"]] == ["gemini", "mock"]
    gemini = {f["pattern"]: f for f in doc["providers"][0]["families"]}
    assert gemini["imagen-*"]["status"] == "retired"
    assert gemini["imagen-*"]["replacement"] == "gemini/gemini-3.1-flash-image"
    flash = gemini["gemini-3.1-flash-image"]
    assert (flash["generation"], flash["edit"], flash["variation"]) == (True, True, False)
    assert flash["n_per_call"] == 1 and flash["sizes"] == [] and "16:9" in flash["aspect_ratios"]
    assert gemini["gemini-2.5-flash-image*"]["status"] == "retired"  # past its sunset


def test_a_key_sees_only_what_it_may_use() -> None:
    policy = KeyPolicy(id="k", allowed_models=("openai/gpt-image-2.6-*", "mock/*"))
    response = listing(BUILTIN, ["openai", "mock", "gemini"], day=READ_ON, max_n=10, policy=policy)
    names = [p.name for p in response.providers]
    assert names == ["mock", "openai"]
    [openai] = [p for p in response.providers if p.name == "openai"]
    assert [list(f.models) for f in openai.families] == [
        ["openai/gpt-image-2.6-sunburst", "openai/gpt-image-2.6-flare"]
    ]
