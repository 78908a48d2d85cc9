"""Faces: a detector and a face-embedding model in ONNX, run by onnxruntime (which tunebook already ships).

The defaults are OpenCV Zoo's YuNet (``face_detection_yunet_2023mar.onnx``, Wu et al. 2023, "YuNet: A Tiny
Millisecond-level Face Detector") and SFace (``face_recognition_sface_2021dec.onnx``, Zhong et al. 2021),
downloaded once from the Hub into ``models/face-models/``: 0.2 MB and 37 MB, CPU-fast, Apache-2.0.

- detection: the image letterboxed into the detector's input (BGR, 0-255, NCHW), outputs ``cls/obj/bbox/kps``
  at strides 8, 16, 32 decoded as OpenCV's ``FaceDetectorYN`` does (score = sqrt(cls · obj); centre =
  (cell + offset) · stride; size = exp(log-size) · stride; five landmarks), then non-maximum suppression;
- embedding: each face aligned by a similarity transform of its five landmarks onto the ArcFace 112×112
  template (Umeyama 1991 least squares), RGB 0-255 NCHW into SFace, the output L2-normalised.

``embed_faces(image)`` gives one unit row per face found. Another pair of models with the same interfaces works
from a folder holding ``detector.onnx`` and ``embedder.onnx`` (or the two file names above).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DETECTOR = ("opencv/face_detection_yunet", "face_detection_yunet_2023mar.onnx")
EMBEDDER = ("opencv/face_recognition_sface", "face_recognition_sface_2021dec.onnx")
FOLDER = "face-models"
STRIDES = (8, 16, 32)
# ArcFace's five-point template for a 112×112 crop (insightface ``arcface_dst``): eyes, nose, mouth corners
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]], dtype=np.float64)


class FaceModelError(RuntimeError):
    """The face models cannot be found, downloaded or run; the message says what to do."""


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    landmarks: np.ndarray  # (5, 2)
    score: float


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def fetch_face_models(folder: str | os.PathLike | None, models_dir: str | os.PathLike,
                      endpoint: str | None = None) -> tuple[Path, Path]:
    """(detector, embedder) files: from ``folder`` when given, else ``models_dir/face-models`` (downloaded once)."""
    base = Path(folder) if folder else Path(models_dir) / FOLDER
    pairs = [(base / "detector.onnx", base / "embedder.onnx"), (base / DETECTOR[1], base / EMBEDDER[1])]
    for det, emb in pairs:
        if det.is_file() and emb.is_file():
            return det, emb
    if folder:
        raise FaceModelError(f"{base}: needs detector.onnx + embedder.onnx (or {DETECTOR[1]} + {EMBEDDER[1]})")
    from huggingface_hub import hf_hub_download

    try:
        for repo, name in (DETECTOR, EMBEDDER):
            hf_hub_download(repo, name, local_dir=base, endpoint=endpoint)
    except Exception as exc:  # offline, gated or moved: the caller goes on without face likeness
        raise FaceModelError(f"could not download the face models ({DETECTOR[0]}, {EMBEDDER[0]}) into {base} "
                             f"({type(exc).__name__}: {str(exc)[:160]}); copy the two .onnx files there yourself"
                             ) from None
    return base / DETECTOR[1], base / EMBEDDER[1]


def letterbox(image: Image.Image, width: int, height: int) -> tuple[np.ndarray, float]:
    """The image scaled to fit ``width``×``height`` (top-left, black padding) as BGR float NCHW, and the scale."""
    rgb = image.convert("RGB")
    scale = min(width / rgb.width, height / rgb.height)
    resized = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR)
    canvas = np.zeros((height, width, 3), np.float32)
    canvas[:resized.height, :resized.width] = np.asarray(resized, np.float32)
    return canvas[..., ::-1].transpose(2, 0, 1)[None].copy(), scale


def decode_yunet(outputs: dict[str, np.ndarray], width: int, height: int, threshold: float) -> list[Face]:
    """Faces from YuNet's per-stride outputs (OpenCV ``face_detect.cpp``, ``postProcess``)."""
    faces = []
    for s in STRIDES:
        cols, rows = width // s, height // s
        cls = np.clip(outputs[f"cls_{s}"].reshape(-1), 0, 1)
        obj = np.clip(outputs[f"obj_{s}"].reshape(-1), 0, 1)
        bbox = outputs[f"bbox_{s}"].reshape(-1, 4)
        kps = outputs[f"kps_{s}"].reshape(-1, 10)
        score = np.sqrt(cls * obj)
        for i in np.nonzero(score >= threshold)[0]:
            r, c = divmod(int(i), cols)
            cx, cy = (c + bbox[i, 0]) * s, (r + bbox[i, 1]) * s
            w, h = np.exp(bbox[i, 2]) * s, np.exp(bbox[i, 3]) * s
            marks = np.stack([(kps[i, 0::2] + c) * s, (kps[i, 1::2] + r) * s], axis=1)
            faces.append(Face((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), marks, float(score[i])))
        del rows
    return faces


def nms(faces: list[Face], iou: float = 0.3) -> list[Face]:
    """Greedy non-maximum suppression by score."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if all(_iou(f.box, k.box) < iou for k in kept):
            kept.append(f)
    return kept


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of the similarity (rotation, uniform scale, shift) taking ``src`` points closest to ``dst``
    (Umeyama 1991, "Least-squares estimation of transformation parameters between two point patterns")."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var = (s ** 2).sum() / len(src)
    scale = float((sig * np.diag(sign)).sum() / var) if var > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """The face warped onto the 112×112 template (PIL wants the inverse map: output -> input)."""
    m = similarity_transform(landmarks.astype(np.float64), TEMPLATE * size / 112)
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2].reshape(-1)
    return image.convert("RGB").transform((size, size), Image.AFFINE, tuple(inv), Image.BILINEAR)


class FaceModels:
    """A loaded detector + embedder (see the module docstring)."""

    def __init__(self, detector: Path, embedder: Path, device: str = "auto", threshold: float = 0.9):
        import onnxruntime as ort

        try:
            self.detector = ort.InferenceSession(str(detector), providers=_providers(device))
            self.embedder = ort.InferenceSession(str(embedder), providers=_providers(device))
        except Exception as exc:
            raise FaceModelError(f"onnxruntime cannot open the face models ({detector.name}, {embedder.name}): "
                                 f"{str(exc)[:200]}; delete them to download again") from None
        shape = self.detector.get_inputs()[0].shape
        self.det_h, self.det_w = (shape[2], shape[3]) if all(isinstance(x, int) for x in shape[2:]) else (640, 640)
        eshape = self.embedder.get_inputs()[0].shape
        self.face_size = eshape[2] if isinstance(eshape[2], int) else 112
        self.threshold = threshold
        names = {o.name for o in self.detector.get_outputs()}
        missing = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES if f"{k}_{s}" not in names]
        if missing:
            raise FaceModelError(f"{detector}: not a YuNet-style detector (no outputs {', '.join(missing[:4])})")

    def detect(self, image: Image.Image) -> list[Face]:
        pixels, scale = letterbox(image, self.det_w, self.det_h)
        names = [o.name for o in self.detector.get_outputs()]
        outs = dict(zip(names, self.detector.run(None, {self.detector.get_inputs()[0].name: pixels}), strict=True))
        faces = nms(decode_yunet(outs, self.det_w, self.det_h, self.threshold))
        return [Face(tuple(v / scale for v in f.box), f.landmarks / scale, f.score) for f in faces]

    def embed_faces(self, image: Image.Image) -> list[np.ndarray]:
        """One L2-normalised row per face found in ``image``."""
        rows = []
        for face in self.detect(image):
            crop = np.asarray(align(image, face.landmarks, self.face_size), np.float32).transpose(2, 0, 1)[None]
            feat = self.embedder.run(None, {self.embedder.get_inputs()[0].name: crop})[0].reshape(-1)
            norm = float(np.linalg.norm(feat))
            if norm > 0:
                rows.append((feat / norm).astype(np.float32))
        return rows


def load_face_models(folder: str | os.PathLike | None, models_dir: str | os.PathLike, device: str = "auto",
                     endpoint: str | None = None) -> FaceModels:
    return FaceModels(*fetch_face_models(folder, models_dir, endpoint), device=device)


def build_tiny_face_models(folder: str | os.PathLike, size: int = 64) -> Path:
    """Random-free tiny ONNX stand-ins with the real interfaces (test-only: needs the ``onnx`` package).

    Detector: input [1,3,size,size] BGR; at stride 32 a cell's face score is sigmoid of its mean colour's
    "skin" response (red high, blue low), boxes centred on the cell, 32 px, landmarks spread like a face; the
    strides 8 and 16 never fire. Embedder: [1,3,112,112] -> the mean R, G, B and their contrasts (8 numbers).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nodes, inits, outputs = [], [], []
    for s in STRIDES:
        n = (size // s) ** 2
        nodes.append(helper.make_node("AveragePool", ["input"], [f"pool_{s}"], kernel_shape=[s, s], strides=[s, s]))
        heads = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
        for head, ch in heads.items():
            w = np.zeros((ch, 3, 1, 1), np.float32)
            b = np.zeros(ch, np.float32)
            if head == "cls":
                w[0, :, 0, 0] = [-0.08, 0.0, 0.08] if s == 32 else 0  # BGR: red up, blue down
                b[0] = -4.0 if s == 32 else -20.0
            elif head == "obj":
                b[0] = 20.0
            elif head == "bbox":
                b[:] = [0.5, 0.5, 0.0, 0.0]
            else:
                b[:] = [0.3, 0.35, 0.7, 0.35, 0.5, 0.55, 0.35, 0.75, 0.65, 0.75]
            inits += [numpy_helper.from_array(w, f"w_{head}_{s}"), numpy_helper.from_array(b, f"b_{head}_{s}"),
                      numpy_helper.from_array(np.array([1, n, ch], np.int64), f"shape_{head}_{s}")]
            act = f"{head}_{s}_conv"
            nodes.append(helper.make_node("Conv", [f"pool_{s}", f"w_{head}_{s}", f"b_{head}_{s}"], [act]))
            if head in ("cls", "obj"):
                nodes.append(helper.make_node("Sigmoid", [act], [f"{act}_sig"]))
                act = f"{act}_sig"
            nodes.append(helper.make_node("Transpose", [act], [f"{act}_t"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"{act}_t", f"shape_{head}_{s}"], [f"{head}_{s}"]))
            outputs.append(helper.make_tensor_value_info(f"{head}_{s}", TensorProto.FLOAT, [1, n, ch]))
    graph = helper.make_graph(nodes, "tiny_yunet", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, [1, 3, size, size])], outputs, inits)
    det = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(det)
    onnx.save(det, str(folder / "detector.onnx"))
    w = np.array([[1, 0, 0, 1, 0, 1, 1, 0], [0, 1, 0, -1, 1, 0, 1, 1], [0, 0, 1, 0, -1, -1, 0, 1]], np.float32) / 255
    emb_nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "w"], ["fc1"])]
    graph = helper.make_graph(emb_nodes, "tiny_sface", [helper.make_tensor_value_info(
        "data", TensorProto.FLOAT, [1, 3, 112, 112])], [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(w, "w")])
    emb = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(emb)
    onnx.save(emb, str(folder / "embedder.onnx"))
    return folder
