"""The protobuf wire codec and the ONNX views of dlserver.onnx (no protobuf library in the guest)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlserver.onnx import model as om
from dlserver.onnx import wire
from dlserver.onnx.wire import ProtoError
from reference.wire import encode_len_field, encode_tag

# Varints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1])
def test_varint_round_trip(value):
    enc = wire.encode_varint(value)
    assert wire.read_varint(enc, 0, len(enc)) == (value, len(enc))


def test_negative_varint_is_ten_bytes_twos_complement():
    enc = wire.encode_varint(-1)
    assert enc == b"\xff" * 9 + b"\x01"
    value, _ = wire.read_varint(enc, 0, len(enc))
    assert wire.to_signed64(value) == -1 and wire.to_signed32(value) == -1


def test_varint_past_ten_bytes_is_an_error():
    data = b"\xff" * 10 + b"\x01"
    with pytest.raises(ProtoError, match="longer than 10 bytes at byte 0"):
        wire.read_varint(data, 0, len(data))
    with pytest.raises(ProtoError, match="longer than 10 bytes"):
        wire.Message(b"\x08" + data)


def test_truncated_varint():
    with pytest.raises(ProtoError, match="truncated varint at byte 1"):
        wire.Message(b"\x08\x80\x80")


def test_length_past_the_end():
    with pytest.raises(ProtoError, match="length 10 runs past the end"):
        wire.Message(b"\x0a\x0a" + b"abc")


def test_truncated_fixed_fields():
    with pytest.raises(ProtoError, match="truncated fixed32 field 1"):
        wire.Message(b"\x0d\x00\x00")
    with pytest.raises(ProtoError, match="truncated fixed64 field 1"):
        wire.Message(b"\x09" + b"\x00" * 7)


def test_invalid_wire_type_and_field_zero():
    with pytest.raises(ProtoError, match="invalid wire type 6"):
        wire.Message(b"\x0e\x00")
    with pytest.raises(ProtoError, match="field number 0"):
        wire.Message(b"\x00\x00")
    with pytest.raises(ProtoError, match="invalid wire type 4"):
        wire.Message(b"\x0c")  # an end-group tag outside a group


def test_unknown_group_is_kept_as_bytes():
    group = encode_tag(9, wire.SGROUP) + b"\x08\x05" + encode_tag(9, wire.EGROUP)
    data = b"\x08\x01" + group + b"\x10\x02"
    m = wire.Message(data)
    assert [f.number for f in m.fields] == [1, 9, 2]
    assert m.serialize() == data
    with pytest.raises(ProtoError, match="truncated group"):
        wire.Message(encode_tag(9, wire.SGROUP) + b"\x08\x05")


def test_packed_varints():
    values = [0, 1, 300, 2**40, 2**64 - 1]
    payload = wire.encode_packed_varints(values)
    assert wire.decode_packed_varints(payload, 0, len(payload)) == values
    with pytest.raises(ProtoError, match="truncated varint"):
        wire.decode_packed_varints(payload[:-1], 0, len(payload) - 1)


# The message tree ---------------------------------------------------------------------------


def _small_model():
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "W")
    node = helper.make_node("MatMul", ["X", "W"], ["Y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_untouched_message_serializes_to_the_same_bytes():
    data = _small_model().SerializeToString()
    m = om.parse_model(data)
    g = m.graph()
    for t in g.initializers():
        om.read_tensor_data(t)
    assert m.msg.serialize() == data


def test_nested_edit_recomputes_lengths():
    model = _small_model()
    data = model.SerializeToString()
    m = om.parse_model(data)
    t = m.graph().initializers()[0]
    name = t.fields("name")[0]
    t.msg.replace(name, encode_len_field(8, b"a much longer name than before"))
    out = m.msg.serialize()
    model.graph.initializer[0].name = "a much longer name than before"
    assert out == model.SerializeToString()


def test_unknown_fields_survive_an_edit():
    model = _small_model()
    t = model.graph.initializer[0]
    tensor_bytes = t.SerializeToString() + encode_len_field(99, b"unknown-in-tensor")
    m = om.parse_model(model.SerializeToString() + encode_tag(77, wire.VARINT) + wire.encode_varint(5))
    assert m.msg.fields[-1].number == 77
    tm = om.Tensor(wire.Message(tensor_bytes), "t")
    d = om.read_tensor_data(tm)
    om.write_tensor_data(tm, d, [v * 2 for v in d.values])
    out = tm.msg.serialize()
    assert out.endswith(encode_len_field(99, b"unknown-in-tensor"))
    parsed = TensorProto()
    parsed.ParseFromString(out)
    np.testing.assert_array_equal(numpy_helper.to_array(parsed), 2 * numpy_helper.to_array(t))


# Views: wire types of known fields ------------------------------------------------------------


def test_graph_with_the_wrong_wire_type():
    data = encode_tag(1, wire.VARINT) + wire.encode_varint(8) + encode_tag(7, wire.VARINT) + b"\x01"
    with pytest.raises(
        ProtoError, match=r"field 7 \(graph\) has wire type varint, expected length-delimited"
    ):
        om.parse_model(data)


def test_tensor_float_data_with_the_wrong_wire_type():
    t = encode_tag(4, wire.VARINT) + b"\x01"
    with pytest.raises(ProtoError, match=r"field 4 \(float_data\) has wire type varint"):
        om.parse_tensor(t)


def test_nested_wrong_wire_type_names_the_path():
    model = _small_model()
    bad_tensor = encode_tag(2, wire.LEN) + wire.encode_varint(1) + b"x"  # data_type as bytes
    graph = model.graph.SerializeToString() + encode_len_field(5, bad_tensor)
    data = encode_len_field(7, graph)
    m = om.parse_model(data)
    with pytest.raises(ProtoError, match=r"graph.initializer\[1\]: field 2 \(data_type\)"):
        m.graph().initializers()


def test_repeated_scalars_packed_or_not():
    # dims unpacked (as onnx writes them) and packed; attribute ints unpacked
    t = TensorProto(dims=[2, 3], data_type=TensorProto.FLOAT, float_data=list(range(6)))
    unpacked = om.parse_tensor(t.SerializeToString())
    packed_dims = encode_len_field(1, wire.encode_packed_varints([2, 3]))
    rest = t.SerializeToString()[4:]  # drop the two unpacked dims (2 bytes each)
    packed = om.parse_tensor(packed_dims + rest)
    assert unpacked.dims == packed.dims == [2, 3]
    a = helper.make_attribute("kernel_shape", [5, 5])
    view = om.Attribute(wire.Message(a.SerializeToString()), "a")
    assert view.value() == [5, 5]


# Tensor storage -----------------------------------------------------------------------------


def _tensors():
    rng = np.random.default_rng(0)
    cases = []
    f = rng.standard_normal((2, 3)).astype(np.float32)
    cases.append(("float raw", numpy_helper.from_array(f, "a")))
    cases.append(("float_data", helper.make_tensor("a", TensorProto.FLOAT, [2, 3], f.ravel().tolist())))
    d = rng.standard_normal(4)
    cases.append(("double raw", numpy_helper.from_array(d, "a")))
    cases.append(("double_data", helper.make_tensor("a", TensorProto.DOUBLE, [4], d.tolist())))
    for dt, npt in (
        (TensorProto.INT8, np.int8),
        (TensorProto.UINT8, np.uint8),
        (TensorProto.INT16, np.int16),
        (TensorProto.UINT16, np.uint16),
        (TensorProto.INT32, np.int32),
        (TensorProto.INT64, np.int64),
        (TensorProto.UINT32, np.uint32),
        (TensorProto.UINT64, np.uint64),
    ):
        info = np.iinfo(npt)
        v = np.array([info.min, info.max, 0, 1, 7], dtype=npt)
        cases.append((f"{npt.__name__} raw", numpy_helper.from_array(v, "a")))
        cases.append((f"{npt.__name__} typed", helper.make_tensor("a", dt, [5], v.tolist())))
    b = np.array([True, False, True])
    cases.append(("bool raw", numpy_helper.from_array(b, "a")))
    cases.append(("bool typed", helper.make_tensor("a", TensorProto.BOOL, [3], b.tolist())))
    h = np.array([1.5, -2.25, 65504, 1e-4], dtype=np.float16)
    cases.append(("float16 raw", numpy_helper.from_array(h, "a")))
    cases.append(("float16 int32_data", helper.make_tensor("a", TensorProto.FLOAT16, [4], h.tolist())))
    bf = [1.5, -2.25, 3.0e38, 1e-4]
    cases.append(("bfloat16 int32_data", helper.make_tensor("a", TensorProto.BFLOAT16, [4], bf)))
    cases.append(
        (
            "bfloat16 raw",
            helper.make_tensor(
                "a",
                TensorProto.BFLOAT16,
                [4],
                onnx.numpy_helper.to_array(helper.make_tensor("a", TensorProto.BFLOAT16, [4], bf))
                .view(np.uint16)
                .tobytes(),
                raw=True,
            ),
        )
    )
    return cases


@pytest.mark.parametrize("label,tensor", _tensors(), ids=[c[0] for c in _tensors()])
def test_read_tensor_data_matches_numpy_helper(label, tensor):
    expected = numpy_helper.to_array(tensor)
    data = om.read_tensor_data(om.parse_tensor(tensor.SerializeToString()))
    if tensor.data_type == TensorProto.BFLOAT16:
        expected = expected.astype(np.float32)
    got = np.array(list(data.values), dtype=expected.dtype)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)
    assert data.storage == ("raw_data" if tensor.HasField("raw_data") else data.storage)


@pytest.mark.parametrize("label,tensor", _tensors(), ids=[c[0] for c in _tensors()])
def test_write_back_keeps_storage_and_bytes(label, tensor):
    data = tensor.SerializeToString()
    t = om.parse_tensor(data)
    d = om.read_tensor_data(t)
    om.write_tensor_data(t, d, d.values)
    assert t.msg.serialize() == data  # the same values: the same bytes
    if d.kind == "int":
        new = list(reversed(d.values))
    else:
        new = [v / 2 for v in d.values]
    om.write_tensor_data(t, d, new)
    out = TensorProto()
    out.ParseFromString(t.msg.serialize())
    assert out.HasField("raw_data") == tensor.HasField("raw_data")
    expected = np.array(new, dtype=numpy_helper.to_array(tensor).dtype)
    got = numpy_helper.to_array(out)
    if tensor.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        expected = np.array(new, dtype=np.float32)
        assert np.allclose(got.astype(np.float32), expected, rtol=1e-2)
    else:
        np.testing.assert_array_equal(got.ravel(), expected)


def test_unpacked_float_data_is_rewritten_in_place():
    occurrences = b"".join(encode_tag(4, wire.FIXED32) + np.float32(v).tobytes() for v in (1.0, 2.0, 3.0))
    data = encode_tag(1, wire.VARINT) + b"\x03" + encode_tag(2, wire.VARINT) + b"\x01" + occurrences
    t = om.parse_tensor(data)
    d = om.read_tensor_data(t)
    assert list(d.values) == [1.0, 2.0, 3.0] and len(d.segments) == 3
    om.write_tensor_data(t, d, [1.0, 4.0, 3.0])
    out = t.msg.serialize()
    assert len(out) == len(data)
    assert out == data.replace(np.float32(2.0).tobytes(), np.float32(4.0).tobytes())


def test_value_count_must_match_dims():
    t = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    del t.float_data[-1]
    with pytest.raises(
        ProtoError, match=r"\('w'\): float_data holds 3 values, dims \[2, 2\] of FLOAT need 4"
    ):
        om.read_tensor_data(om.parse_tensor(t.SerializeToString()))
    r = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "r")
    r.raw_data = r.raw_data[:-1]
    with pytest.raises(ProtoError, match="raw_data holds 15 bytes"):
        om.read_tensor_data(om.parse_tensor(r.SerializeToString()))


def test_external_data_and_unsupported_types_are_errors():
    t = numpy_helper.from_array(np.zeros(2, dtype=np.float32), "e")
    t.data_location = TensorProto.EXTERNAL
    with pytest.raises(ProtoError, match="external data is not supported"):
        om.read_tensor_data(om.parse_tensor(t.SerializeToString()))
    f8 = TensorProto(name="f8", data_type=TensorProto.FLOAT8E4M3FN, dims=[1], int32_data=[0])
    with pytest.raises(ProtoError, match="FLOAT8E4M3FN is not supported"):
        om.read_tensor_data(om.parse_tensor(f8.SerializeToString()))
