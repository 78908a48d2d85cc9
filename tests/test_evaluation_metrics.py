"""The evaluation's formulas on constructed embeddings, the choosing rule on constructed scores, the face models'
decoding and alignment, and the tiny DINOv2 / face stand-ins with the real interfaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers.evaluation import metrics as M
from helpers.evaluation.choose import recommend
from helpers.evaluation.run import Variant
from helpers.evaluation.settings import EvalSettings


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_vendi_of_identical_items_is_one_and_of_orthogonal_items_is_n():
    same = unit(np.ones((5, 8)))
    assert M.vendi_score(same) == pytest.approx(1.0)
    assert M.vendi_score(np.eye(6)) == pytest.approx(6.0)
    two_groups = unit([[1, 0], [1, 0], [0, 1], [0, 1]])  # two distinct things, twice each
    assert M.vendi_score(two_groups) == pytest.approx(2.0)


def test_clip_score_is_100_w_cos_clipped_at_zero():
    v = unit([[1, 2, 3]])
    assert M.clip_score(v, v)[0] == pytest.approx(100 * M.CLIP_SCORE_WEIGHT)
    assert M.clip_score(v, v, weight=2.5)[0] == pytest.approx(250.0)
    assert M.clip_score(v, -v)[0] == 0.0  # negative cosine counts as 0 (Hessel et al.)
    half = unit([[1, 0]]), unit([[1, 1]])
    assert M.clip_score(*half)[0] == pytest.approx(100 * math.cos(math.pi / 4))


def test_fidelity_nearest_and_centroid_on_constructed_sets():
    train = np.eye(4)
    assert M.nearest_similarity(train[:2], train) == pytest.approx(1.0)
    idx, sims = M.nearest(unit([[1, 0.1, 0, 0]]), train)
    assert idx[0] == 0 and sims[0] == pytest.approx(1 / math.sqrt(1.01))
    assert M.centroid_distance(train, train) == pytest.approx(0.0)
    assert M.centroid_distance(train[:1], train[1:2]) == pytest.approx(1.0)  # orthogonal centroids


def test_memorisation_flags_only_pairs_at_or_above_the_threshold():
    train = np.eye(3)
    generated = unit([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    flagged = M.memorised(generated, train, 0.95)
    assert [(g, t) for g, t, _ in flagged] == [(0, 0), (2, 2)]
    assert M.memorised(generated, np.zeros((0, 3)), 0.95) == []


def test_preservation_and_face_likeness():
    a = unit(np.random.default_rng(0).normal(size=(4, 8)))
    assert M.preservation(a, a) == pytest.approx(1.0)
    assert M.preservation(a, -a) == pytest.approx(-1.0)
    assert math.isnan(M.face_likeness(np.zeros((0, 8)), a))
    assert M.face_likeness(a[:2], a) == pytest.approx(1.0)


def variants():
    return [Variant("base model", 0.0, "base"), Variant("epoch 2", 0.5, "base", "l2", 2),
            Variant("epoch 2", 1.0, "base", "l2", 2), Variant("epoch 4", 1.0, "base", "l4", 4)]


def test_the_rule_picks_the_best_aligned_candidate_that_passes_every_test():
    scored = {"base": {"fidelity_dino": 0.5, "clip_score_new": 20.0, "memorised": 0, "preservation": 1.0},
              "epoch 2 @ 0.5": {"fidelity_dino": 0.79, "clip_score_new": 24.0, "memorised": 0, "preservation": 0.8},
              "epoch 2 @ 1": {"fidelity_dino": 0.80, "clip_score_new": 22.0, "memorised": 0, "preservation": 0.7},
              "epoch 4 @ 1": {"fidelity_dino": 0.81, "clip_score_new": 25.0, "memorised": 2, "preservation": 0.6}}
    rec = recommend(variants(), scored, EvalSettings())
    assert (rec.checkpoint, rec.strength) == ("epoch 2", 0.5)
    # the best fidelity that counts is the best without memorised images (0.80, not epoch 4's 0.81)
    assert rec.sentence.startswith("epoch 2 at 0.5: fidelity within 1.3 % of the best, text alignment on new "
                                   "prompts 24.0 above the base model's 20.0, no memorised images")
    assert not rec.failed and rec.lora == "l2"
    # the tolerance is a setting: a stricter one moves the pick
    strict = recommend(variants(), scored, EvalSettings(fidelity_tolerance=0.01))
    assert (strict.checkpoint, strict.strength) == ("epoch 2", 1.0)
    assert strict.sentence.startswith("epoch 2 at 1: the best fidelity")
    low = recommend(variants(), scored, EvalSettings(min_preservation=0.75, fidelity_tolerance=0.01))
    assert "fails preservation" in low.sentence  # nothing passes everything: relaxed, and said


def test_when_nothing_passes_the_rule_relaxes_and_says_so():
    scored = {"base": {"fidelity_dino": 0.5, "clip_score_new": 30.0, "memorised": 0},
              "epoch 2 @ 0.5": {"fidelity_dino": 0.8, "clip_score_new": 21.0, "memorised": 3},
              "epoch 2 @ 1": {"fidelity_dino": 0.8, "clip_score_new": 20.0, "memorised": 1},
              "epoch 4 @ 1": {"fidelity_dino": 0.8, "clip_score_new": 22.0, "memorised": 5}}
    rec = recommend(variants(), scored, EvalSettings())
    assert (rec.checkpoint, rec.strength) == ("epoch 2", 1.0)  # the fewest memorised images
    assert "1 memorised image" in rec.sentence and "fails memorisation, alignment" in rec.sentence


def test_tiny_dino_embeds_images_into_unit_rows(tmp_path):
    from helpers.models.encoders import EncoderError, build_tiny_dino, load_encoder

    enc = load_encoder(str(build_tiny_dino(tmp_path / "tiny-dino")), tmp_path, "cpu")
    rows = enc.embed_images([Image.new("RGB", (40, 30), c) for c in ("red", "blue", "white")])
    assert rows.shape == (3, enc.dim) == (3, 32) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    with pytest.raises(EncoderError, match="image-only"):
        enc.embed_texts(["a cat"])
    from helpers.dataset.advice import local_encoders
    from helpers.models.encoders import build_tiny_clip

    build_tiny_clip(tmp_path / "tiny-clip")
    assert local_encoders(tmp_path) == ["tiny-clip"]  # zero-shot composition never picks the image-only DINOv2


def test_yunet_decoding_and_landmark_alignment():
    from helpers.models.faces import TEMPLATE, align, decode_yunet, nms, similarity_transform

    size = 64
    outs = {}
    for s in (8, 16, 32):
        n = (size // s) ** 2
        outs |= {f"cls_{s}": np.zeros((1, n, 1)), f"obj_{s}": np.ones((1, n, 1)), f"bbox_{s}": np.zeros((1, n, 4)),
                 f"kps_{s}": np.zeros((1, n, 10))}
    outs["cls_16"][0, 5, 0] = 0.81  # row 1, column 1 of the 4×4 grid
    outs["bbox_16"][0, 5] = [0.5, 0.5, math.log(2), 0.0]
    faces = decode_yunet(outs, size, size, 0.5)
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    assert faces[0].box == pytest.approx((8.0, 16.0, 40.0, 32.0))  # centre (24, 24), 32 wide, 16 tall
    assert len(nms(faces + faces)) == 1
    # a similarity transform is recovered exactly
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = TEMPLATE / 2
    m = similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], shift)
    assert align(Image.new("RGB", (200, 200), "red"), TEMPLATE * 1.5).size == (112, 112)


def test_tiny_face_models_find_a_face_and_embed_it(tmp_path):
    pytest.importorskip("onnx")
    from helpers.models.faces import build_tiny_face_models, load_face_models

    models = load_face_models(build_tiny_face_models(tmp_path / "faces"), tmp_path, "cpu")
    face = Image.new("RGB", (128, 128), (20, 40, 200))
    ImageDraw.Draw(face).rectangle([64, 0, 127, 63], fill=(230, 170, 140))  # a "skin" patch, top right
    found = models.detect(face)
    assert len(found) == 1 and found[0].box[0] >= 60 and found[0].box[3] <= 70
    rows = models.embed_faces(face)
    assert len(rows) == 1 and np.linalg.norm(rows[0]) == pytest.approx(1.0, abs=1e-5)
    assert models.embed_faces(Image.new("RGB", (128, 128), (20, 40, 200))) == []


def test_face_likeness_is_skipped_with_a_note_when_training_images_have_no_faces(tmp_path):
    pytest.importorskip("onnx")
    from types import SimpleNamespace

    from helpers.evaluation.face_metric import open_faces
    from helpers.models.faces import build_tiny_face_models

    folder = build_tiny_face_models(tmp_path / "faces")
    blue = tmp_path / "blue.png"
    Image.new("RGB", (64, 64), (20, 40, 200)).save(blue)
    skin = tmp_path / "skin.png"
    Image.new("RGB", (64, 64), (230, 170, 140)).save(skin)
    ws = SimpleNamespace(models=tmp_path)
    settings = EvalSettings(face_models=str(folder), faces="auto", device="cpu")
    notes: list[str] = []
    assert open_faces(ws, settings, {"paths": [blue]}, notes) is None
    assert "no faces" in notes[0]
    train = {"paths": [skin, blue]}
    scorer = open_faces(ws, settings, train, notes)
    assert scorer is not None and train["faces"].shape[0] >= 1
    missing = []
    assert open_faces(ws, EvalSettings(face_models=str(tmp_path / "nowhere")), {"paths": [skin]}, missing) is None
    assert "face likeness skipped" in missing[0] and "detector.onnx" in missing[0]


def test_face_likeness_is_scored_per_variant_from_the_generated_faces(tmp_path):
    pytest.importorskip("onnx")
    from helpers.evaluation.face_metric import FaceScorer
    from helpers.evaluation.run import score
    from helpers.generation.grid import Cell
    from helpers.generation.parameters import GenerationParameters
    from helpers.generation.pipeline import GeneratedImage, ImageSettings
    from helpers.generation.prompts import PromptSpec
    from helpers.models.faces import build_tiny_face_models, load_face_models

    models = load_face_models(build_tiny_face_models(tmp_path / "faces"), tmp_path, "cpu")
    skin = Image.new("RGB", (64, 64), (230, 170, 140))
    blue = Image.new("RGB", (64, 64), (20, 40, 200))
    cells = [Cell(0, 0, column, ImageSettings(prompt="p"), "m", (), [GeneratedImage(img, GenerationParameters("p"))])
             for column, img in enumerate([blue, skin])]
    train = {"faces": np.stack(models.embed_faces(skin))}
    notes: list[str] = []
    scored, flagged = score(None, EvalSettings(images_per_prompt=1), variants()[:2], {"new": [(PromptSpec("p"), None)]},
                            {"new": cells}, {}, train, FaceScorer(models), notes)
    assert scored["epoch 2 @ 0.5"]["face_likeness"] == pytest.approx(1.0)  # the same face as the training one
    assert "face_likeness" not in scored["base"] and notes == ["face likeness: no face found in the images of base"]
    assert flagged == []


def test_face_models_are_downloaded_from_the_hub_into_the_workspace_once(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import http.server
    import threading

    import huggingface_hub.constants as hf_constants

    from helpers.models.faces import DETECTOR, EMBEDDER, FaceModelError, build_tiny_face_models, load_face_models
    from tests.test_dataset_advice import FakeHub

    tiny = build_tiny_face_models(tmp_path / "tiny")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        models = tmp_path / "models"
        with pytest.raises(FaceModelError, match="could not download the face models"):
            load_face_models(None, models, "cpu", endpoint=url)
        FakeHub.repos[DETECTOR[0]] = {DETECTOR[1]: (tiny / "detector.onnx").read_bytes()}
        FakeHub.repos[EMBEDDER[0]] = {EMBEDDER[1]: (tiny / "embedder.onnx").read_bytes()}
        load_face_models(None, models, "cpu", endpoint=url)
        assert (models / "face-models" / DETECTOR[1]).read_bytes() == (tiny / "detector.onnx").read_bytes()
        FakeHub.repos.clear()  # the second load finds the files and never asks the Hub
        assert load_face_models(None, models, "cpu", endpoint=url).face_size == 112
    finally:
        server.shutdown()
        server.server_close()
        FakeHub.repos.clear()


def test_the_cards_prompt_format_follows_the_captions():
    from helpers.evaluation.card import prompt_format

    tags = ["zkps, red circle, blue background", "zkps, green square, white background"]
    assert prompt_format(tags, ["zkps"]) == "Start with `zkps`, then comma-separated tags describing the picture."
    assert prompt_format(["a photo of a zkps cat on a sofa"], ["zkps"]) == \
        "Write a sentence describing the picture and include `zkps`."
    assert prompt_format([], []) == "Describe the picture; no trigger word is needed."
