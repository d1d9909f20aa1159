"""A bench run's findings and their rendering: the table's rows, the counts checked
against the processes' Prometheus metrics, the targets, and the numbers of `--json`."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class Row:
    """One line of the table; `section` is its letter, (a) to (i)."""

    section: str
    what: str
    result: str
    p50: str = ""
    p99: str = ""
    compare: str = ""


@dataclass
class Report:
    """What a run found: the table's rows, the bench-vs-Prometheus count checks, the
    targets met or missed, and `numbers` (the `--json` output)."""

    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, float, float]] = field(default_factory=list)  # what, bench, metrics
    targets: list[tuple[str, bool]] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def add(self, *cells: str, **named: str) -> None:
        self.rows.append(Row(*cells, **named))

    def check(self, what: str, bench: float, metrics: float) -> None:
        self.checks.append((what, bench, metrics))

    def target(self, what: str, met: bool) -> str:
        self.targets.append((what, met))
        return f"{'met' if met else 'MISSED'}: {what}"

    @property
    def ok(self) -> bool:
        return all(b == m for _, b, m in self.checks)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def machine() -> str:
    """Cores, CPU model, memory, kernel and Python of this machine."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024 / 1024:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def render(
    report: Report, run: str, generator: str, started: float, load_before: tuple[float, ...]
) -> str:
    """The table, its metrics cross-check and targets, headed by the machine and the run."""
    head = [
        "| | measurement | result | p50 | p99 | compared / target |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        f"| {r.section} | {r.what} | {r.result} | {r.p50} | {r.p99} | {r.compare} |"
        for r in report.rows
    ]
    checks = ", ".join(
        f"{what} {b:.0f}/{m:.0f}{'' if b == m else ' MISMATCH'}" for what, b, m in report.checks
    )
    missed = [w for w, met in report.targets if not met]
    lines = [
        f"bench: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}",
        f"run: {run}; load generator: {generator}; "
        f"load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}; took {time.monotonic() - started:.0f} s",
        "",
        *head,
        *rows,
        "",
        f"metrics cross-check (bench/Prometheus): {checks} -> "
        f"{'all equal' if report.ok else 'MISMATCH'}",
        f"targets: {len(report.targets) - len(missed)}/{len(report.targets)} met"
        + (f"; missed: {', '.join(missed)}" if missed else ""),
    ]
    return "\n".join(lines)
