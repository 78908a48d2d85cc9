"""What an evaluation produces: the grid columns (``Variant``), the ``Recommendation`` and the ``Evaluation``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One column of the grids: the base model, or a checkpoint (as itself or as its LoRA at a strength)."""

    checkpoint: str  # label ("base model" for the base)
    strength: float
    model: str
    lora: str | None = None
    epoch: int | None = None

    @property
    def key(self) -> str:
        return "base" if self.checkpoint == "base model" else f"{self.checkpoint} @ {self.strength:g}"


@dataclass
class Recommendation:
    checkpoint: str
    strength: float
    sentence: str
    model: str = ""
    lora: str | None = None
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """What ``evaluate_run`` made: ``metrics[(checkpoint label, strength)] = {metric: value}``."""

    run: str
    folder: Path
    report_path: Path
    metrics_path: Path
    metrics: dict[tuple[str, float], dict[str, float]]
    recommendation: Recommendation | None
    flagged: list[dict]
    notes: list[str]
    charts: dict[str, Path] = field(default_factory=dict)
    grids: dict[str, list[Path]] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> list[dict]:
        """One row per checkpoint and strength (for a DataFrame or a printout)."""
        return [{"checkpoint": c, "strength": s, **m} for (c, s), m in self.metrics.items()]
