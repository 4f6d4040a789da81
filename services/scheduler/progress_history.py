"""A job's loss curve, kept in its record: every progress report appended, bounded by
thinning. Pure: the job store calls `extended` when a report arrives.

A resumed attempt starts again from its checkpoint, so its first reports have lower
steps than the last ones kept: those later points belonged to work that was lost and are
dropped, and the curve stays a function of the step. The run so far is cut into at most
`MAX_POINTS` buckets of equal width (a power of two steps, doubling as the run grows),
and each bucket keeps its latest report: the whole run stays evenly covered, the newest
report is always there, and the cost per job stays bounded."""

from __future__ import annotations

from collections.abc import Sequence

from llmos.v1 import common_pb2

MAX_POINTS = 240


def bucket_width(step: int) -> int:
    """The smallest power of two that cuts steps 0..`step` into at most MAX_POINTS."""
    width = 1
    while step // width >= MAX_POINTS:
        width *= 2
    return width


def extended(
    history: Sequence[common_pb2.TrainingProgress], report: common_pb2.TrainingProgress
) -> list[common_pb2.TrainingProgress]:
    """`history` with `report` appended (see the module's docstring)."""
    point = common_pb2.TrainingProgress()
    point.CopyFrom(report)
    points = [p for p in history if p.step < report.step] + [point]
    width = bucket_width(report.step)
    latest: dict[int, common_pb2.TrainingProgress] = {}
    for p in points:  # in step order: a later point replaces its bucket's earlier one
        latest[p.step // width] = p
    return list(latest.values())
