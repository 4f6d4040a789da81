"""Loss curves as SVG drawn on the server: no charting library, no script, and the
page's Content-Security-Policy holds (SVG attributes are not inline styles). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmos.v1 import common_pb2

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 36


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class LossChart:
    """What the template draws: two polylines and the axes' ticks."""

    loss: str  # "x,y x,y ..." (SVG polyline points)
    val_loss: str
    x_ticks: Sequence[Tick]
    y_ticks: Sequence[Tick]
    points: int
    summary: str  # the chart in words, for screen readers

    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT
    top: int = TOP


def loss_chart(
    history: Sequence[common_pb2.TrainingProgress], total_steps: int
) -> LossChart | None:
    """The training and validation loss by step; None before the first report."""
    points = [p for p in history if p.step > 0]
    if not points:
        return None
    values = [p.loss for p in points] + [p.val_loss for p in points if p.val_loss]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    last_step = max(total_steps, points[-1].step, 1)

    def x(step: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * step / last_step

    def y(value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (high - value) / (high - low)

    def line(pairs: Sequence[tuple[float, float]]) -> str:
        return " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in pairs)

    val = [(p.step, p.val_loss) for p in points if p.val_loss]
    x_ticks = [Tick(x(s), HEIGHT - BOTTOM + 16, str(round(s))) for s in _spread(0, last_step)]
    y_ticks = [Tick(LEFT - 6, y(v) + 4, f"{v:.2f}") for v in _spread(low, high)]
    last = points[-1]
    summary = (
        f"Loss from {points[0].loss:.3f} at step {points[0].step} to {last.loss:.3f} at step "
        f"{last.step}" + (f"; validation loss {val[-1][1]:.3f}" if val else "")
    )
    return LossChart(
        line([(p.step, p.loss) for p in points]), line(val), x_ticks, y_ticks, len(points), summary
    )


def _spread(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]
