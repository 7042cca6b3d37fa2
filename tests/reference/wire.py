"""Protobuf encoding helpers that only tests need."""

from dlserver.onnx.wire import LEN, encode_varint


def encode_tag(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def encode_len_field(number: int, payload) -> bytes:
    """Tag, length and payload of a length-delimited field."""
    return encode_tag(number, LEN) + encode_varint(len(payload)) + bytes(payload)
