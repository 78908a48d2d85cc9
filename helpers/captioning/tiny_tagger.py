"""A tiny WD-tagger-shaped ONNX model, built offline, for the demo, the notebook on a demo workspace and tests.

It has the real interface: an NHWC float input ``[batch, S, S, 3]`` (BGR, 0-255, dynamic batch), one output of
sigmoid probabilities, and a ``selected_tags.csv`` in the real format (4 rating rows, then general, then
character tags, with a parenthesised character and an emoticon). Its "vision" is the mean colour of the image:
``sigmoid(mean_bgr / 255 @ W + b)``, so a red picture gets ``red_theme``, a mostly white one
``white_background``, and tests can predict every score from the input tensor.

The ONNX file is written by a ~50-line protobuf encoder below, so the demo runs where the ``onnx`` package is
not installed (it is a test-only dependency); the tests check the file with ``onnx.checker``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers.captioning.wd_tagger import MODEL_FILE, TAGS_FILE, write_source
from helpers.changes import write_text_atomic

# (tag_id, name, category, count); weights per (blue, green, red) mean in 0..1, then bias
TINY_TAGS: list[tuple[int, str, int, int, tuple[float, float, float], float]] = [
    (9999999, "general", 9, 100, (0.0, 0.0, 0.0), 2.0),
    (9999998, "sensitive", 9, 90, (0.0, 0.0, 0.0), 0.0),
    (9999997, "questionable", 9, 80, (0.0, 0.0, 0.0), -1.0),
    (9999996, "explicit", 9, 70, (0.0, 0.0, 0.0), -2.0),
    (1, "red_theme", 0, 5000, (-8.0, -8.0, 10.0), -1.0),
    (2, "green_theme", 0, 4000, (-8.0, 10.0, -8.0), -1.0),
    (3, "blue_theme", 0, 3000, (10.0, -8.0, -8.0), -1.0),
    (4, "white_background", 0, 9000, (6.0, 6.0, 6.0), -14.0),
    (5, "simple_background", 0, 8000, (0.0, 0.0, 0.0), 1.5),
    (6, "no_humans", 0, 7000, (0.0, 0.0, 0.0), 0.8),
    (7, "dark", 0, 2000, (-6.0, -6.0, -6.0), 2.0),
    (8, ">_<", 0, 1000, (0.0, 0.0, 0.0), -3.0),
    (9, "english_text", 0, 1500, (0.0, 0.0, 0.0), -0.7),
    (10, "hatsune_miku", 4, 900, (6.0, 6.0, -12.0), -3.0),
    (11, "alear_(female)_(fire_emblem)", 4, 800, (-12.0, 6.0, 6.0), -3.0),
]
TINY_INPUT_SIZE = 64


def tiny_tagger_weights() -> tuple[np.ndarray, np.ndarray]:
    """W [3, K] acting on the BGR mean scaled to 0..1, and b [K]."""
    w = np.array([t[4] for t in TINY_TAGS], dtype=np.float32).T
    b = np.array([t[5] for t in TINY_TAGS], dtype=np.float32)
    return w, b


def build_tiny_tagger(folder: str | os.PathLike, size: int = TINY_INPUT_SIZE) -> Path:
    """Write ``model.onnx`` + ``selected_tags.csv`` (+ ``source.json``) into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, b = tiny_tagger_weights()
    tmp = folder / (MODEL_FILE + ".tmp")
    tmp.write_bytes(encode_tagger_model(w / 255.0, b, size))
    os.replace(tmp, folder / MODEL_FILE)
    rows = ["tag_id,name,category,count"] + [f"{t[0]},{t[1]},{t[2]},{t[3]}" for t in TINY_TAGS]
    write_text_atomic(folder / TAGS_FILE, "\n".join(rows) + "\n")
    write_source(folder, {"repo": "tunebook/tiny-tagger", "note": "random-free toy tagger built offline by "
                          "helpers.captioning.tiny_tagger; it only sees the mean colour"})
    return folder


# ------------------------------------------------------------------------- minimal protobuf writer for ONNX
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:  # TensorProto: dims=1, data_type=2 (1=float), name=8, raw=9
    array = np.ascontiguousarray(array, dtype="<f4")
    return b"".join(_int(1, d) for d in array.shape) + _int(2, 1) + _bytes(8, name) + _bytes(9, array.tobytes())


def _value_info(name: str, dims: list[int | str]) -> bytes:  # ValueInfoProto -> TypeProto.Tensor -> shape
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, 1) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], attrs: bytes = b"") -> bytes:
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op) + attrs


def _ints_attr(name: str, values: list[int]) -> bytes:  # AttributeProto: name=1, ints=8, type=20 (7=INTS)
    return _bytes(5, _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7))


def _int_attr(name: str, value: int) -> bytes:  # i=3, type=20 (2=INT)
    return _bytes(5, _bytes(1, name) + _int(3, value) + _int(20, 2))


def encode_tagger_model(weight: np.ndarray, bias: np.ndarray, size: int) -> bytes:
    """ONNX ModelProto bytes (IR 8, opset 13): input [N,size,size,3] -> ReduceMean(H,W) -> MatMul -> Add -> Sigmoid."""
    k = int(bias.shape[0])
    nodes = [
        _node("ReduceMean", ["input"], ["mean"], _ints_attr("axes", [1, 2]) + _int_attr("keepdims", 0)),
        _node("MatMul", ["mean", "weight"], ["logits_nobias"]),
        _node("Add", ["logits_nobias", "bias"], ["logits"]),
        _node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny_wd_tagger")
             + _bytes(5, _tensor("weight", weight)) + _bytes(5, _tensor("bias", bias))
             + _bytes(11, _value_info("input", ["batch", size, size, 3]))
             + _bytes(12, _value_info("output", ["batch", k])))
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 8) + _bytes(2, "tunebook") + _bytes(7, graph) + _bytes(8, opset)

