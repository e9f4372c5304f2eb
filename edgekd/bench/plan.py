"""The rows of a benchmark: model x backend x precision x batch, parsed and checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekd.artifact_kinds import BACKENDS  # noqa: F401  (one list of backends: the kinds table; bench uses it)
from edgekd.errors import EdgekdError

PRECISIONS = ("fp32", "fp16", "int8")
REFERENCES = ("rd", "dskd")  # every row gets a speed ratio against these families (same backend, precision, batch)

OK, FAILED, SKIPPED, INTERRUPTED = "ok", "failed", "skipped", "interrupted"


@dataclass
class Model:
    """One detector: its name in the report, its family and its checkpoint; or an exported artifact given as it
    is (`fixed`), which runs only on its own backend and precision."""
    name: str
    family: str
    checkpoint: Path | None
    fixed: Path | None = None
    fixed_backend: str | None = None
    fixed_precision: str | None = None
    error: str | None = None  # why there is no model (e.g. its training failed): its rows fail with this reason


@dataclass
class Row:
    model: Model
    backend: str
    precision: str
    batch: int
    status: str = "pending"
    reason: str = ""
    artifact: Path | None = None
    results: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.model.name, self.backend, self.precision, self.batch

    @property
    def label(self) -> str:
        return f"{self.model.name} {self.backend} {self.precision} b{self.batch}"

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason.splitlines()[0] if reason else status


def parse_list(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise EdgekdError(f"{option} '{text}': {', '.join(unknown) or 'nothing given'} is not one of "
                          f"{', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_batches(text: str) -> list[int]:
    try:
        sizes = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 or size > 4096 for size in sizes):
        raise EdgekdError(f"--batch '{text}' must be batch sizes from 1 to 4096, comma-separated (e.g. 1,8)")
    return list(dict.fromkeys(sizes))


def plan_rows(models: list[Model], backends: list[str], precisions: list[str], batches: list[int]) -> list[Row]:
    """Every combination; the torch backend measures the checkpoint as it is (FP32 on CPU; FP16 only on a GPU)."""
    rows = []
    for model in models:
        pairs = [(model.fixed_backend, model.fixed_precision)] if model.fixed else \
            [(backend, precision) for backend in backends for precision in precisions]
        rows += [Row(model, backend, precision, batch) for backend, precision in pairs for batch in batches]
    return rows


def unique_names(models: list[Model]) -> list[Model]:
    """Two checkpoints of one family (runs/a/model.ckpt, runs/b/model.ckpt) must not share a report name."""
    seen: dict[str, int] = {}
    for model in models:
        count = seen.get(model.name, 0)
        seen[model.name] = count + 1
        if count:
            model.name = f"{model.name}-{count + 1}"
    return models
