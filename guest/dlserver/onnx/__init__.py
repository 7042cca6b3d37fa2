"""ONNX without protobuf or numpy: the wire format (wire), typed views of the ONNX messages
(model) and a small inference interpreter (interpreter)."""
