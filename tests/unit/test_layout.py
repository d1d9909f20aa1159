"""The layout is the architecture: each layer imports only the layers below it. This reads
every module's imports (without running them) and fails on an import across the rules,
so the subpackages keep meaning what docs/architecture.md says they mean."""

from __future__ import annotations

import ast
from pathlib import Path

import imagejobs

PACKAGE = Path(imagejobs.__file__).parent

# layer -> the layers (or layer.module) it may import from; generated code (v1) is free
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "safefetch": {"domain"},
    "providers": {"domain", "safefetch"},
    # webhooks' pure part (endpoints, signing, the delivery record, the payload) is used
    # by the layers below it, as domain is; its process part only by api and runtime
    "config": {"domain", "providers", "safefetch", "webhooks.endpoints", "webhooks.signing"},
    "store": {"domain", "config", "webhooks.delivery"},
    # runtime.metrics and runtime.tracing (and the job's log fields, runtime.logs): the
    # process-wide observability every layer that runs jobs records into; runtime.process:
    # what a background process does around its main loop (signals, /metrics, spans)
    "worker": {
        "domain",
        "config",
        "store",
        "providers",
        "runtime.metrics",
        "runtime.tracing",
        "runtime.logs",
        "runtime.process",
        "webhooks.payload",
    },
    "webhooks": {
        "domain",
        "config",
        "store",
        "safefetch",
        "providers.upstream",
        "runtime.metrics",
        "runtime.tracing",
        "runtime.logs",
        "runtime.process",
    },
    "gateway": {"domain", "config", "runtime.binaries"},
    "api": {
        "domain",
        "config",
        "store",
        "webhooks",
        "worker.finish",
        "providers.registry",
        "providers.catalogue",
        # the price table: a submit's budget reservation is its estimate (issue 16)
        "providers.pricing",
        "runtime.metrics",
        "runtime.tracing",
        "runtime.logs",
    },
    "client": {"domain"},
    "runtime": {
        "domain",
        "config",
        "store",
        "worker",
        "providers",
        "webhooks",
        "api",
        "gateway",
        "client",
    },
    "testing": {"domain", "config", "gateway", "runtime"},
    "__main__": {"runtime.cli"},
    "__init__": set(),
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(path: Path) -> set[str]:
    """`layer` or `layer.module` for each imagejobs name the module imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "imagejobs" or (
                node.module.startswith("imagejobs.") and node.module.count(".") == 1
            ):
                # `from imagejobs.runtime import metrics`: the name may be a module
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif node.module.startswith("imagejobs."):
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("imagejobs.")]
        for name in names:
            parts = name.split(".")[1:]
            found.add(".".join(parts[:2]))
    return found


def allowed(layer: str, target: str) -> bool:
    top = target.split(".")[0]
    if top in (layer, "v1", "__version__"):
        return True
    rules = ALLOWED[layer]
    return top in rules or target in rules


def test_every_module_imports_only_the_layers_below_it() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts]
    assert len(modules) > 50
    wrong = [
        f"{path.relative_to(PACKAGE)} imports imagejobs.{target}"
        for path in modules
        for target in sorted(imported(path))
        if not allowed(layer_of(path), target)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a domain module importing the store is refused."""
    module = tmp_path / "bad.py"
    module.write_text("from imagejobs.store.records import JobRecords\nimport imagejobs.api\n")
    targets = imported(module)
    assert targets == {"store.records", "api"}
    assert not any(allowed("domain", t) for t in targets)
