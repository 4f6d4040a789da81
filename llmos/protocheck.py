"""Find which string field of a serialized protobuf message is not valid UTF-8.

The protobuf runtime refuses such a message with a generic parse error; callers deserve
to hear which field was wrong. The bytes are re-read as unknown fields (which are not
UTF-8 checked) and walked against the message's descriptor.
"""

from __future__ import annotations

from google.protobuf import empty_pb2, unknown_fields  # type: ignore[attr-defined]
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

LENGTH_DELIMITED = 2


def invalid_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """Path of the first string field (e.g. `messages[1].content`) that is not UTF-8.

    None when every string is valid or the bytes are not a well-formed message at all.
    """
    holder = empty_pb2.Empty()
    try:
        holder.ParseFromString(data)
    except DecodeError:
        return None
    seen: dict[int, int] = {}
    for item in unknown_fields.UnknownFieldSet(holder):
        field = descriptor.fields_by_number.get(item.field_number)
        if field is None or item.wire_type != LENGTH_DELIMITED:
            continue
        index = seen.get(item.field_number, 0)
        seen[item.field_number] = index + 1
        path: str = prefix + str(field.name)
        if field.is_repeated:
            path += f"[{index}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                bytes(item.data).decode("utf-8")
            except UnicodeDecodeError:
                return path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            found: str | None = invalid_utf8_field(field.message_type, bytes(item.data), path + ".")
            if found:
                return found
    return None
