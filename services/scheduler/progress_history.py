"""A job's loss curve, kept in its record: every progress report appended, bounded by
thinning. Pure: the job store calls `extended` when a report arrives.

A resumed attempt starts again from its checkpoint, so its first reports have lower
steps than the last ones kept: those later points belonged to work that was lost and are
dropped, and the curve stays a function of the step. When the curve reaches
`MAX_POINTS`, every other point is dropped (the newest always stays): the whole run
stays visible at half the resolution, and the cost per job stays bounded."""

from __future__ import annotations

from collections.abc import Sequence

from llmos.v1 import common_pb2

MAX_POINTS = 240


def extended(
    history: Sequence[common_pb2.TrainingProgress], report: common_pb2.TrainingProgress
) -> list[common_pb2.TrainingProgress]:
    """`history` with `report` appended (see the module's docstring)."""
    kept = [point for point in history if point.step < report.step]
    if len(kept) >= MAX_POINTS:
        kept = kept[::2]
    point = common_pb2.TrainingProgress()
    point.CopyFrom(report)
    return [*kept, point]
