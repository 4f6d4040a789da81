"""Priority classes of work, highest first (shared by the gateway and the scheduler)."""

from __future__ import annotations

from enum import IntEnum

from llmos.errors import InvalidArgument


class PriorityClass(IntEnum):
    """Highest first; the values match `llmos.v1.Priority`."""

    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    BATCH = 4

    @property
    def word(self) -> str:
        """How people, messages and metric labels name it: "critical", ..., "batch"."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: int | str, field_name: str = "priority") -> PriorityClass:
        """A class from its proto number or name; 0/"" mean NORMAL."""
        if value in (0, ""):
            return cls.NORMAL
        try:
            if isinstance(value, str):
                return cls[value.strip().upper().removeprefix("PRIORITY_")]
            return cls(value)
        except (KeyError, ValueError):
            names = ", ".join(c.word for c in cls)
            raise InvalidArgument(
                field_name, f"unknown priority class {value!r}; use one of {names}"
            ) from None
