"""What the storage service accepts as names, digests, paths and documents.

Every field a caller sends is checked here before it reaches a lookup or a path: names
and file paths may not climb out of their folder (`..`), digests are exactly SHA-256 hex,
and free-form JSON documents are bounded so one request cannot bloat the metadata.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmos.errors import InvalidArgument

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FILE_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
MAX_BLOB = 1 << 40
MAX_STRUCT_BYTES = 64 << 10
MAX_DESCRIPTION = 1000


def check_name(value: str, field: str) -> str:
    """A dataset, model or alias name: lowercase, short, and never a path."""
    if not NAME.match(value) or ".." in value:
        raise InvalidArgument(
            field,
            f"{value!r} is not a name (1-128 of a-z 0-9 . _ -, starting with a letter or digit)",
        )
    return value


def check_tenant(tenant: str) -> str:
    """The tenant every lookup is keyed by; the gateway asserts it, so it must be there."""
    if not tenant:
        raise InvalidArgument("tenant", "is required")
    return tenant


def check_sha256(value: str, field: str = "sha256") -> str:
    """A blob's name: 64 lowercase hex characters, nothing a path could be made of."""
    if not SHA256.match(value):
        raise InvalidArgument(field, "must be 64 lowercase hexadecimal characters")
    return value


def check_upload_id(value: str, field: str) -> str:
    """An upload's client-chosen id, which names its file: letters, digits, _ and -."""
    if not UPLOAD_ID.match(value):
        raise InvalidArgument(field, "must be 8-64 of A-Z a-z 0-9 _ -")
    return value


def check_blob_size(size: int, field: str) -> int:
    """A declared blob size within what one blob may hold."""
    if not 0 <= size <= MAX_BLOB:
        raise InvalidArgument(field, f"must be between 0 and {MAX_BLOB}")
    return size


def check_file_path(path: str, field: str) -> str:
    """A model file's path: relative, and no component may climb out (`..`)."""
    if not FILE_PATH.match(path) or ".." in path.split("/"):
        raise InvalidArgument(field, f"{path!r} is not a relative file path")
    return path


def check_description(text: str, field: str = "description") -> str:
    """A human description, short enough to list."""
    if len(text) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"is longer than {MAX_DESCRIPTION} characters")
    return text


def check_document(data: dict[str, Any], field: str) -> dict[str, Any]:
    """A free-form JSON object (metadata, lineage) no larger than MAX_STRUCT_BYTES."""
    if len(json.dumps(data)) > MAX_STRUCT_BYTES:
        raise InvalidArgument(field, f"is larger than {MAX_STRUCT_BYTES} bytes")
    return data
