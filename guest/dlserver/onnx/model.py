"""Views of ONNX messages by field number (onnx.proto), over the generic `wire.Message` tree.

Only what dl-server needs is named; every other field stays in the message untouched. Each
view checks, when made, that the known fields it names have a wire type their declared type
allows (a repeated scalar may be packed or not), so a file that is valid protobuf but not an
ONNX message of that type is reported at once and by path ("graph.initializer[3]: ...").

Tensor values: `read_tensor_data` decodes a TensorProto's values whatever field stores them
(raw_data or the typed field, packed or not), and `write_tensor_data` writes new values back
into exactly the same storage (same field, same packed/unpacked occurrences), so everything but
the values is re-emitted byte for byte.
"""

import struct
import sys
from array import array

from .wire import (
    FIXED32,
    FIXED64,
    LEN,
    VARINT,
    WIRE_NAMES,
    Message,
    ProtoError,
    decode_packed_varints,
    encode_packed_varints,
    encode_varint,
    to_signed32,
    to_signed64,
)

# TensorProto.DataType
(
    UNDEFINED,
    FLOAT,
    UINT8,
    INT8,
    UINT16,
    INT16,
    INT32,
    INT64,
    STRING,
    BOOL,
    FLOAT16,
    DOUBLE,
    UINT32,
    UINT64,
    COMPLEX64,
    COMPLEX128,
    BFLOAT16,
) = range(17)
DTYPE_NAMES = {
    0: "UNDEFINED",
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FLOAT16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BFLOAT16",
    17: "FLOAT8E4M3FN",
    18: "FLOAT8E4M3FNUZ",
    19: "FLOAT8E5M2",
    20: "FLOAT8E5M2FNUZ",
    21: "UINT4",
    22: "INT4",
    23: "FLOAT4E2M1",
    24: "FLOAT8E8M0",
    25: "UINT2",
    26: "INT2",
    27: "FLOAT6E2M3",
    28: "FLOAT6E3M2",
}


def dtype_name(dt: int) -> str:
    return DTYPE_NAMES.get(dt, f"data type {dt}")


# kind -> wire types allowed
_ALLOWED = {
    "int": (VARINT,),
    "int*": (VARINT, LEN),
    "float": (FIXED32,),
    "float*": (FIXED32, LEN),
    "double*": (FIXED64, LEN),
    "str": (LEN,),
    "str*": (LEN,),
    "bytes": (LEN,),
    "bytes*": (LEN,),
    "msg": (LEN,),
    "msg*": (LEN,),
}


class View:
    """A typed view of one message; `SCHEMA` maps field number -> (name, kind)."""

    SCHEMA: dict = {}
    _NUMBERS: dict = {}

    def __init_subclass__(cls):
        cls._NUMBERS = {name: num for num, (name, _) in cls.SCHEMA.items()}

    def __init__(self, msg: Message, where: str):
        self.msg = msg
        self.where = where
        for f in msg.fields:
            spec = self.SCHEMA.get(f.number)
            if spec is not None and f.wire_type not in _ALLOWED[spec[1]]:
                allowed = " or ".join(WIRE_NAMES[w] for w in _ALLOWED[spec[1]])
                prefix = f"{where}: " if where else ""
                raise ProtoError(
                    f"{prefix}field {f.number} ({spec[0]}) has wire type"
                    f" {WIRE_NAMES.get(f.wire_type, f.wire_type)}, expected {allowed}"
                )

    def fields(self, name: str):
        return self.msg.all(self._NUMBERS[name])

    def has(self, name: str) -> bool:
        return bool(self.fields(name))

    def get_int(self, name: str, default: int = 0) -> int:
        """A singular integer field: the last occurrence wins (protobuf rules)."""
        occ = self.fields(name)
        return to_signed64(occ[-1].value) if occ else default

    def get_ints(self, name: str) -> list[int]:
        """A repeated integer field, packed or not, as signed 64-bit values."""
        out = []
        for f in self.fields(name):
            if f.wire_type == VARINT:
                out.append(to_signed64(f.value))
            else:
                out.extend(to_signed64(v) for v in decode_packed_varints(self.msg.buf, f.value_start, f.end))
        return out

    def get_float(self, name: str, default: float = 0.0) -> float:
        occ = self.fields(name)
        return struct.unpack("<f", occ[-1].value.to_bytes(4, "little"))[0] if occ else default

    def get_floats(self, name: str) -> list[float]:
        out = []
        for f in self.fields(name):
            if f.wire_type == FIXED32:
                out.append(struct.unpack("<f", f.value.to_bytes(4, "little"))[0])
            else:
                data = self.msg.payload(f)
                if len(data) % 4:
                    raise ProtoError(
                        f"{self.where}: packed {name} of {len(data)} bytes (not a multiple of 4)"
                    )
                out.extend(struct.unpack(f"<{len(data) // 4}f", data))
        return out

    def get_bytes(self, name: str, default: bytes = b"") -> bytes:
        occ = self.fields(name)
        return bytes(self.msg.payload(occ[-1])) if occ else default

    def _text(self, name: str, f) -> str:
        try:
            return str(self.msg.payload(f), "utf-8")
        except UnicodeDecodeError:
            raise ProtoError(f"{self.where}: {name} is not valid UTF-8") from None

    def get_str(self, name: str, default: str = "") -> str:
        occ = self.fields(name)
        return self._text(name, occ[-1]) if occ else default

    def get_strs(self, name: str) -> list[str]:
        return [self._text(name, f) for f in self.fields(name)]

    def message(self, name: str, cls):
        occ = self.fields(name)
        if not occ:
            return None
        if len(occ) > 1:
            raise ProtoError(f"{self.where}: {name} appears {len(occ)} times (merging is not supported)")
        return cls(self.msg.child(occ[0]), f"{self.where}.{name}" if self.where else name)

    def messages(self, name: str, cls) -> list:
        prefix = f"{self.where}.{name}" if self.where else name
        return [cls(self.msg.child(f), f"{prefix}[{i}]") for i, f in enumerate(self.fields(name))]


class OperatorSetId(View):
    SCHEMA = {1: ("domain", "str"), 2: ("version", "int")}


class Dimension(View):
    SCHEMA = {1: ("dim_value", "int"), 2: ("dim_param", "str"), 3: ("denotation", "str")}


class TensorShape(View):
    SCHEMA = {1: ("dim", "msg*")}

    def dims(self) -> list:
        """Each dimension's value, or None when it is symbolic or unknown."""
        return [
            d.get_int("dim_value") if d.has("dim_value") else None for d in self.messages("dim", Dimension)
        ]


class TensorType(View):
    SCHEMA = {1: ("elem_type", "int"), 2: ("shape", "msg")}


class TypeInfo(View):
    SCHEMA = {
        1: ("tensor_type", "msg"),
        4: ("sequence_type", "msg"),
        5: ("map_type", "msg"),
        6: ("denotation", "str"),
        7: ("opaque_type", "msg"),
        8: ("sparse_tensor_type", "msg"),
        9: ("optional_type", "msg"),
    }


class ValueInfo(View):
    SCHEMA = {1: ("name", "str"), 2: ("type", "msg"), 3: ("doc_string", "str"), 4: ("metadata_props", "msg*")}

    @property
    def name(self) -> str:
        return self.get_str("name")

    def tensor_type(self):
        """(elem_type, dims or None) of a tensor-typed value, or None."""
        t = self.message("type", TypeInfo)
        tt = t.message("tensor_type", TensorType) if t is not None else None
        if tt is None:
            return None
        shape = tt.message("shape", TensorShape)
        return tt.get_int("elem_type"), (shape.dims() if shape is not None else None)


class Tensor(View):
    SCHEMA = {
        1: ("dims", "int*"),
        2: ("data_type", "int"),
        3: ("segment", "msg"),
        4: ("float_data", "float*"),
        5: ("int32_data", "int*"),
        6: ("string_data", "bytes*"),
        7: ("int64_data", "int*"),
        8: ("name", "str"),
        9: ("raw_data", "bytes"),
        10: ("double_data", "double*"),
        11: ("uint64_data", "int*"),
        12: ("doc_string", "str"),
        13: ("external_data", "msg*"),
        14: ("data_location", "int"),
        16: ("metadata_props", "msg*"),
    }

    @property
    def name(self) -> str:
        return self.get_str("name")

    @property
    def data_type(self) -> int:
        return self.get_int("data_type")

    @property
    def dims(self) -> list[int]:
        return self.get_ints("dims")

    def label(self) -> str:
        name = self.name
        return f"{self.where} ('{name}')" if name else self.where


class Attribute(View):
    SCHEMA = {
        1: ("name", "str"),
        2: ("f", "float"),
        3: ("i", "int"),
        4: ("s", "bytes"),
        5: ("t", "msg"),
        6: ("g", "msg"),
        7: ("floats", "float*"),
        8: ("ints", "int*"),
        9: ("strings", "bytes*"),
        10: ("tensors", "msg*"),
        11: ("graphs", "msg*"),
        13: ("doc_string", "str"),
        14: ("tp", "msg"),
        15: ("type_protos", "msg*"),
        20: ("type", "int"),
        21: ("ref_attr_name", "str"),
        22: ("sparse_tensor", "msg"),
        23: ("sparse_tensors", "msg*"),
    }

    # AttributeProto.AttributeType -> the field holding the value
    TYPE_FIELDS = {
        1: "f",
        2: "i",
        3: "s",
        4: "t",
        5: "g",
        6: "floats",
        7: "ints",
        8: "strings",
        9: "tensors",
        10: "graphs",
        11: "sparse_tensor",
        12: "sparse_tensors",
        13: "tp",
        14: "type_protos",
    }

    def value(self):
        """The attribute's value: int, float, bytes, Tensor view, or a list of those.
        Without a `type` field (very old files) the type is the one field that is present."""
        kind = self.get_int("type")
        field = self.TYPE_FIELDS.get(kind)
        if field is None:
            present = [name for name in self.TYPE_FIELDS.values() if self.has(name)]
            if len(present) != 1:
                raise ProtoError(
                    f"{self.where} ('{self.get_str('name')}'): attribute type {kind} is not known"
                )
            field = present[0]
        if field == "f":
            return self.get_float("f")
        if field == "i":
            return self.get_int("i")
        if field == "s":
            return self.get_bytes("s")
        if field == "t":
            return self.message("t", Tensor)
        if field == "floats":
            return self.get_floats("floats")
        if field == "ints":
            return self.get_ints("ints")
        if field == "strings":
            return [bytes(self.msg.payload(f)) for f in self.fields("strings")]
        if field == "tensors":
            return self.messages("tensors", Tensor)
        raise ProtoError(
            f"{self.where} ('{self.get_str('name')}'): attribute of type {field} is not supported"
        )


class Node(View):
    SCHEMA = {
        1: ("input", "str*"),
        2: ("output", "str*"),
        3: ("name", "str"),
        4: ("op_type", "str"),
        5: ("attribute", "msg*"),
        6: ("doc_string", "str"),
        7: ("domain", "str"),
        8: ("overload", "str"),
        9: ("metadata_props", "msg*"),
        10: ("device_configurations", "msg*"),
    }


class Graph(View):
    SCHEMA = {
        1: ("node", "msg*"),
        2: ("name", "str"),
        5: ("initializer", "msg*"),
        10: ("doc_string", "str"),
        11: ("input", "msg*"),
        12: ("output", "msg*"),
        13: ("value_info", "msg*"),
        14: ("quantization_annotation", "msg*"),
        15: ("sparse_initializer", "msg*"),
        16: ("metadata_props", "msg*"),
    }

    def initializers(self) -> list[Tensor]:
        return self.messages("initializer", Tensor)


class Model(View):
    SCHEMA = {
        1: ("ir_version", "int"),
        2: ("producer_name", "str"),
        3: ("producer_version", "str"),
        4: ("domain", "str"),
        5: ("model_version", "int"),
        6: ("doc_string", "str"),
        7: ("graph", "msg"),
        8: ("opset_import", "msg*"),
        14: ("metadata_props", "msg*"),
        20: ("training_info", "msg*"),
        25: ("functions", "msg*"),
        26: ("configuration", "msg*"),
    }

    def graph(self) -> Graph:
        g = self.message("graph", Graph)
        if g is None:
            raise ProtoError("the model has no graph (ModelProto field 7)")
        return g

    def opset(self, domain: str = "") -> int | None:
        """The imported version of an operator set ("" and "ai.onnx" are the same)."""
        domains = ("", "ai.onnx") if domain in ("", "ai.onnx") else (domain,)
        for op in self.messages("opset_import", OperatorSetId):
            if op.get_str("domain") in domains:
                return op.get_int("version")
        return None


def parse_model(data) -> Model:
    return Model(Message(data), "")


def parse_tensor(data) -> Tensor:
    return Tensor(Message(data), "tensor")


# Tensor values ----------------------------------------------------------------------------

_F32_TYPES = (FLOAT, COMPLEX64)
_F64_TYPES = (DOUBLE, COMPLEX128)
_INT32_FIELD_TYPES = (UINT8, INT8, UINT16, INT16, INT32, BOOL)
# raw_data element formats (array typecodes; '?' marks the 16-bit floats handled apart)
_RAW_TYPECODE = {
    FLOAT: "f",
    COMPLEX64: "f",
    DOUBLE: "d",
    COMPLEX128: "d",
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    INT32: "i",
    INT64: "q",
    BOOL: "B",
    UINT32: "I",
    UINT64: "Q",
}
_TYPED_FIELD = {
    FLOAT: "float_data",
    COMPLEX64: "float_data",
    DOUBLE: "double_data",
    COMPLEX128: "double_data",
    INT64: "int64_data",
    UINT32: "uint64_data",
    UINT64: "uint64_data",
    STRING: "string_data",
    FLOAT16: "int32_data",
    BFLOAT16: "int32_data",
}
for _t in _INT32_FIELD_TYPES:
    _TYPED_FIELD[_t] = "int32_data"
_BIG_ENDIAN = sys.byteorder == "big"


def le_array(typecode: str, data) -> array:
    """An array from little-endian bytes."""
    a = array(typecode)
    a.frombytes(data)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def le_bytes(a: array) -> bytes:
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def f16_to_f32(raw) -> array:
    n = len(raw) // 2
    return array("f", struct.unpack(f"<{n}e", raw))


def f32_to_f16(values) -> bytes:
    """Round to nearest even (struct's 'e' format); values too large become +-inf."""
    out = bytearray()
    for i in range(0, len(values), 65536):
        chunk = values[i : i + 65536]
        try:
            out += struct.pack(f"<{len(chunk)}e", *chunk)
        except OverflowError:
            out += b"".join(_f16_one(v) for v in chunk)
    return bytes(out)


def _f16_one(v: float) -> bytes:
    try:
        return struct.pack("<e", v)
    except OverflowError:
        return struct.pack("<e", float("inf") if v > 0 else float("-inf"))


def bf16_to_f32(raw) -> array:
    n = len(raw) // 2
    wide = bytearray(4 * n)
    wide[2::4] = raw[0::2]
    wide[3::4] = raw[1::2]
    return le_array("f", wide)


def f32_to_bf16(values: array) -> bytes:
    """Round to nearest even on the upper 16 bits of each float32; NaN becomes 0x7FC0
    (as onnx.helper.float32_to_bfloat16 does)."""
    bits = le_array("I", le_bytes(array("f", values)))
    out = array(
        "H", [0x7FC0 if (u & 0x7FFFFFFF) > 0x7F800000 else (u + 0x7FFF + ((u >> 16) & 1)) >> 16 for u in bits]
    )
    return le_bytes(out)


class TensorData:
    """A tensor's values and where they are stored.

    kind: 'f32' (FLOAT, COMPLEX64; values array('f')), 'f64' (DOUBLE, COMPLEX128; array('d')),
    'f16' / 'bf16' (values widened to array('f')), 'int' (the integer types; list of Python ints
    with the type's signedness), 'string' (list of bytes).
    storage: 'raw_data' or the typed field's name; segments: the occurrences of that field with
    the number of values each holds."""

    __slots__ = ("kind", "dtype", "storage", "segments", "values", "count")

    def __init__(self, kind, dtype, storage, segments, values, count):
        self.kind = kind
        self.dtype = dtype
        self.storage = storage
        self.segments = segments
        self.values = values
        self.count = count


def _kind(dt: int) -> str | None:
    if dt in _F32_TYPES:
        return "f32"
    if dt in _F64_TYPES:
        return "f64"
    if dt == FLOAT16:
        return "f16"
    if dt == BFLOAT16:
        return "bf16"
    if dt in _INT32_FIELD_TYPES or dt in (INT64, UINT32, UINT64):
        return "int"
    if dt == STRING:
        return "string"
    return None


def element_count(t: Tensor) -> int:
    n = 1
    for d in t.dims:
        if d < 0:
            raise ProtoError(f"{t.label()}: negative dimension {d}")
        n *= d
    return n * 2 if t.data_type in (COMPLEX64, COMPLEX128) else n


def read_tensor_data(t: Tensor) -> TensorData:
    """Decode the values of a TensorProto (checked against its dims)."""
    dt = t.data_type
    kind = _kind(dt)
    if kind is None:
        raise ProtoError(f"{t.label()}: data type {dtype_name(dt)} is not supported")
    if t.get_int("data_location") == 1 or t.has("external_data"):
        raise ProtoError(f"{t.label()}: external data is not supported (the values must be in the file)")
    if t.has("segment"):
        raise ProtoError(f"{t.label()}: segmented tensors are not supported")
    count = element_count(t)
    typed_name = _TYPED_FIELD[dt]
    raw = t.fields("raw_data")
    typed = t.fields(typed_name)
    values: array | list  # as TensorData.values for `kind`
    if raw and (len(raw) > 1 or raw[0].end > raw[0].value_start):
        if len(raw) > 1:
            raise ProtoError(f"{t.label()}: raw_data appears {len(raw)} times")
        if any(f.end > f.value_start or f.wire_type != LEN for f in typed):
            raise ProtoError(f"{t.label()}: values in both raw_data and {typed_name}")
        if kind == "string":
            raise ProtoError(f"{t.label()}: a STRING tensor cannot use raw_data")
        data = t.msg.payload(raw[0])
        size = 2 if kind in ("f16", "bf16") else array(_RAW_TYPECODE[dt]).itemsize
        if len(data) != count * size:
            raise ProtoError(
                f"{t.label()}: raw_data holds {len(data)} bytes, dims {t.dims} of"
                f" {dtype_name(dt)} need {count * size}"
            )
        if kind == "f16":
            values = f16_to_f32(data)
        elif kind == "bf16":
            values = bf16_to_f32(data)
        else:
            values = le_array(_RAW_TYPECODE[dt], data)
            if kind == "int":
                values = values.tolist()
        return TensorData(kind, dt, "raw_data", [(raw[0], count)], values, count)
    segments = []
    if kind in ("f32", "f64"):
        tc, wt_single, size = ("f", FIXED32, 4) if kind == "f32" else ("d", FIXED64, 8)
        chunks = []
        for f in typed:
            if f.wire_type == LEN:
                data = t.msg.payload(f)
                if len(data) % size:
                    raise ProtoError(
                        f"{t.label()}: packed {typed_name} of {len(data)} bytes (not a multiple of {size})"
                    )
            else:
                data = t.msg.buf[f.value_start : f.end]
            chunks.append(data)
            segments.append((f, len(data) // size))
        values = le_array(tc, b"".join(chunks))
    elif kind == "string":
        values = [bytes(t.msg.payload(f)) for f in typed]
        segments = [(f, 1) for f in typed]
    else:
        values = []
        for f in typed:
            if f.wire_type == LEN:
                part = decode_packed_varints(t.msg.buf, f.value_start, f.end)
            else:
                part = [f.value]
            segments.append((f, len(part)))
            values.extend(part)
        if typed_name == "int32_data":
            values = [to_signed32(v) for v in values]
        elif typed_name == "int64_data":
            values = [to_signed64(v) for v in values]
        if kind == "f16":
            values = f16_to_f32(struct.pack(f"<{len(values)}H", *[v & 0xFFFF for v in values]))
        elif kind == "bf16":
            values = bf16_to_f32(struct.pack(f"<{len(values)}H", *[v & 0xFFFF for v in values]))
    if len(values) != count:
        raise ProtoError(
            f"{t.label()}: {typed_name} holds {len(values)} values, dims {t.dims}"
            f" of {dtype_name(dt)} need {count}"
        )
    return TensorData(kind, dt, typed_name, segments, values, count)


def write_tensor_data(t: Tensor, data: TensorData, values) -> None:
    """Store new values (same kind and count as `data.values`) into the same fields, packed or
    unpacked exactly as before; occurrences whose encoding does not change keep their bytes."""
    msg = t.msg
    kind = data.kind
    if kind == "string":
        return
    if data.storage == "raw_data":
        field = data.segments[0][0]
        if kind == "f16":
            new = f32_to_f16(values)
        elif kind == "bf16":
            new = f32_to_bf16(values)
        else:
            new = le_bytes(array(_RAW_TYPECODE[data.dtype], values))
        if new != msg.payload(field):
            msg.replace(field, bytes(msg.buf[field.start : field.value_start]) + new)
        return
    if kind in ("f32", "f64"):
        size = 4 if kind == "f32" else 8
        new = le_bytes(array("f" if kind == "f32" else "d", values))
        pos = 0
        for field, n in data.segments:
            chunk = new[pos : pos + n * size]
            pos += n * size
            if chunk != msg.buf[field.value_start : field.end]:
                msg.replace(field, bytes(msg.buf[field.start : field.value_start]) + chunk)
        return
    if kind == "f16":
        values = list(struct.unpack(f"<{len(values)}H", f32_to_f16(values)))
    elif kind == "bf16":
        values = list(struct.unpack(f"<{len(values)}H", f32_to_bf16(values)))
    pos = 0
    for field, n in data.segments:
        part = values[pos : pos + n]
        pos += n
        if field.wire_type == LEN:
            old = decode_packed_varints(msg.buf, field.value_start, field.end)
            if _same_ints(old, part, data.storage):
                continue
            payload = encode_packed_varints(part)
            msg.replace(
                field, bytes(msg.buf[field.start : field.tag_end]) + encode_varint(len(payload)) + payload
            )
        else:
            if _same_ints([field.value], part, data.storage):
                continue
            msg.replace(field, bytes(msg.buf[field.start : field.tag_end]) + encode_varint(part[0]))


def _same_ints(old: list[int], new: list[int], storage: str) -> bool:
    if storage == "int32_data":
        return [to_signed32(v) for v in old] == [to_signed32(v) for v in new]
    if storage == "int64_data":
        return [to_signed64(v) for v in old] == [to_signed64(v) for v in new]
    return old == new
