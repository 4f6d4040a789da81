"""Forms: the API's refusal of a field shown next to that field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from llmos.errors import InvalidArgument

#: errors by form field; "" holds an error that names no field on the form
FieldErrors = dict[str, str]


def field_errors(
    exc: InvalidArgument, fields: Iterable[str], aliases: Mapping[str, str] | None = None
) -> FieldErrors:
    """`exc` placed on the form field it names: the API names request fields
    ("spec.max_steps"), which are the form's names or, through `aliases`, map to them;
    the last part of a dotted name is tried too."""
    known = set(fields)
    aliases = aliases or {}
    for candidate in (exc.field, exc.field.rpartition(".")[2]):
        name = aliases.get(candidate, candidate)
        if name in known:
            return {name: exc.reason}
    return {"": str(exc)}
