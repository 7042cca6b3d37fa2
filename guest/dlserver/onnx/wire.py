"""Protocol-buffers wire format: a generic message tree that re-emits what it did not change.

A message is parsed into a flat list of `Field`s (tag, wire type, byte range); embedded
messages are parsed lazily by `Message.child`. Nothing is thrown away: unknown fields, the
field order, duplicate occurrences and non-canonical encodings are all kept as byte ranges of
the original buffer, so `Message.serialize()` returns the original bytes for every part that
was not edited. Editing is done by giving a field a `replacement` (its whole new encoding,
tag included) or by editing a child message; both mark the ancestors dirty so their length
prefixes are recomputed.

Wire types: 0 varint (at most 10 bytes), 1 fixed64, 2 length-delimited, 3/4 groups
(deprecated; an unknown group is skipped as a byte range), 5 fixed32.
Errors are `ProtoError` with the byte offset; the caller adds the file name.
"""

VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5
WIRE_NAMES = {
    VARINT: "varint",
    FIXED64: "fixed64",
    LEN: "length-delimited",
    SGROUP: "start-group",
    EGROUP: "end-group",
    FIXED32: "fixed32",
}
MASK64 = (1 << 64) - 1
MAX_DEPTH = 100


class ProtoError(ValueError):
    """The bytes are not a valid protobuf message (or not the expected one)."""


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """The varint at pos (value mod 2**64) and the position after it."""
    result = 0
    shift = 0
    start = pos
    while shift < 70:
        if pos >= end:
            raise ProtoError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & MASK64, pos
        shift += 7
    raise ProtoError(f"varint longer than 10 bytes at byte {start}")


def encode_varint(value: int) -> bytes:
    """A varint; negative values are written as their 64-bit two's complement (10 bytes)."""
    value &= MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def to_signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def to_signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & (1 << 31) else value


class Field:
    """One occurrence of a field: [start, tag_end) is the tag, [value_start, end) the value
    (after the length prefix for length-delimited fields). `value` is the integer of a
    varint/fixed field, None otherwise."""

    __slots__ = (
        "number",
        "wire_type",
        "start",
        "tag_end",
        "value_start",
        "end",
        "value",
        "child",
        "replacement",
    )

    def __init__(self, number, wire_type, start, tag_end, value_start, end, value):
        self.number = number
        self.wire_type = wire_type
        self.start = start
        self.tag_end = tag_end
        self.value_start = value_start
        self.end = end
        self.value = value
        self.child = None  # the parsed embedded Message, once asked for
        self.replacement = None  # new encoding of the whole field (b"" deletes it)


def _skip_group(buf, pos: int, end: int, number: int, depth: int) -> int:
    """Position after the end-group tag matching `number` (groups are skipped, not parsed)."""
    if depth > MAX_DEPTH:
        raise ProtoError(f"groups nested too deeply at byte {pos}")
    while True:
        if pos >= end:
            raise ProtoError(f"truncated group (field {number})")
        tag_start = pos
        key, pos = read_varint(buf, pos, end)
        wt, num = key & 7, key >> 3
        if wt == EGROUP:
            if num != number:
                raise ProtoError(f"end-group tag for field {num} at byte {tag_start} inside group {number}")
            return pos
        pos = _skip_value(buf, pos, end, wt, num, tag_start, depth + 1)


def _skip_value(buf, pos, end, wt, num, tag_start, depth) -> int:
    if wt == VARINT:
        return read_varint(buf, pos, end)[1]
    if wt in (FIXED64, FIXED32):
        size = 8 if wt == FIXED64 else 4
        if pos + size > end:
            raise ProtoError(f"truncated {WIRE_NAMES[wt]} field {num} at byte {tag_start}")
        return pos + size
    if wt == LEN:
        length, pos = read_varint(buf, pos, end)
        if length > end - pos:
            raise ProtoError(
                f"field {num} at byte {tag_start}: length {length} runs past the end ({end - pos} bytes left)"
            )
        return pos + length
    if wt == SGROUP:
        return _skip_group(buf, pos, end, num, depth)
    raise ProtoError(f"invalid wire type {wt} for field {num} at byte {tag_start}")


def parse_fields(buf, start: int, end: int) -> list[Field]:
    """The fields of the message occupying buf[start:end]."""
    fields = []
    pos = start
    while pos < end:
        tag_start = pos
        key, pos = read_varint(buf, pos, end)
        wt, num = key & 7, key >> 3
        if num == 0:
            raise ProtoError(f"field number 0 at byte {tag_start}")
        tag_end = pos
        value = None
        if wt == VARINT:
            value, pos = read_varint(buf, pos, end)
            value_start = tag_end
        elif wt in (FIXED32, FIXED64):
            size = 4 if wt == FIXED32 else 8
            if pos + size > end:
                raise ProtoError(f"truncated {WIRE_NAMES[wt]} field {num} at byte {tag_start}")
            value = int.from_bytes(buf[pos : pos + size], "little")
            value_start = pos
            pos += size
        elif wt == LEN:
            length, value_start = read_varint(buf, pos, end)
            if length > end - value_start:
                raise ProtoError(
                    f"field {num} at byte {tag_start}: length {length} runs past the end"
                    f" ({end - value_start} bytes left)"
                )
            pos = value_start + length
        elif wt == SGROUP:
            value_start = pos
            pos = _skip_group(buf, pos, end, num, 0)
        else:
            raise ProtoError(f"invalid wire type {wt} for field {num} at byte {tag_start}")
        fields.append(Field(num, wt, tag_start, tag_end, value_start, pos, value))
    return fields


class Message:
    """The fields of one message in `buf[start:end]`, editable without losing anything else."""

    __slots__ = ("buf", "start", "end", "fields", "parent", "dirty", "depth")

    def __init__(self, buf, start: int = 0, end: int | None = None, parent=None, depth: int = 0):
        if not isinstance(buf, memoryview):
            buf = memoryview(buf)
        self.buf = buf
        self.start = start
        self.end = len(buf) if end is None else end
        self.parent = parent
        self.depth = depth
        self.dirty = False
        if depth > MAX_DEPTH:
            raise ProtoError(f"messages nested too deeply at byte {start}")
        self.fields = parse_fields(buf, start, self.end)

    def all(self, number: int) -> list[Field]:
        return [f for f in self.fields if f.number == number]

    def payload(self, field: Field) -> memoryview:
        """The bytes of a length-delimited field's value (no copy)."""
        return self.buf[field.value_start : field.end]

    def child(self, field: Field) -> "Message":
        """The embedded message in a length-delimited field (parsed once)."""
        if field.child is None:
            if field.wire_type != LEN:
                raise ProtoError(f"field {field.number} at byte {field.start} is not a message")
            field.child = Message(self.buf, field.value_start, field.end, self, self.depth + 1)
        return field.child

    def mark_dirty(self) -> None:
        m = self
        while m is not None and not m.dirty:
            m.dirty = True
            m = m.parent

    def replace(self, field: Field, encoding: bytes) -> None:
        """Emit `encoding` (tag included) instead of this field's original bytes."""
        field.replacement = encoding
        self.mark_dirty()

    def original(self, field: Field) -> memoryview:
        """The field's original bytes, tag included."""
        return self.buf[field.start : field.end]

    def serialize(self) -> bytes:
        return b"".join(self._parts())

    def _parts(self) -> list:
        if not self.dirty:
            return [self.buf[self.start : self.end]]
        parts = []
        for f in self.fields:
            if f.replacement is not None:
                parts.append(f.replacement)
            elif f.child is not None and f.child.dirty:
                body = f.child.serialize()
                parts.append(self.buf[f.start : f.tag_end])
                parts.append(encode_varint(len(body)))
                parts.append(body)
            else:
                parts.append(self.buf[f.start : f.end])
        return parts


# Packed repeated values ---------------------------------------------------------------------


def decode_packed_varints(buf, start: int, end: int) -> list[int]:
    """The varints of a packed field's payload buf[start:end] (unsigned 64-bit values)."""
    out: list[int] = []
    append = out.append
    pos = start
    while pos < end:
        b = buf[pos]
        if b < 0x80:  # the common one-byte case without a call
            append(b)
            pos += 1
        else:
            value, pos = read_varint(buf, pos, end)
            append(value)
    return out


def encode_packed_varints(values) -> bytes:
    out = bytearray()
    for v in values:
        v &= MASK64
        if v < 0x80:
            out.append(v)
        else:
            out += encode_varint(v)
    return bytes(out)
