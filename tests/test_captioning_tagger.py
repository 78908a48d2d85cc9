"""WD tagger: tag text rules, preprocessing tensors, the ONNX model path, thresholds, datasets, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.captioning import tags as T
from helpers.captioning import wd_tagger as W
from helpers.captioning.sidecar import SIDECAR_EXT, RenderConfig, load_record, undo_edit
from helpers.captioning.tiny_tagger import TINY_TAGS, build_tiny_tagger, tiny_tagger_weights
from helpers.dataset.caption_files import caption_path, read_caption


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "tiny-tagger")


@pytest.fixture(scope="module")
def tagger(tagger_dir):
    return W.load_tagger(tagger_dir, device="cpu")


# ------------------------------------------------------------------------------------------------ tag text rules
@pytest.mark.parametrize("name, rule, expected", [
    ("long_hair", "both", "long hair"),
    ("^_^", "both", "^_^"),
    ("<o>_<o>", "both", "<o>_<o>"),       # 7 characters: only the emoticon list keeps it
    ("<o>_<o>", "length", "<o> <o>"),     # kohya/Kohaku "longer than 3" rule mangles it
    ("o_o", "length", "o_o"),
    ("a_b", "kaomoji", "a b"),            # short but not an emoticon
    ("a_b", "length", "a_b"),
    ("long_hair", "keep", "long_hair"),
])
def test_underscore_rules(name, rule, expected):
    assert T.format_tag(name, rule) == expected


def test_escaping_and_dedupe_and_sort():
    assert T.format_tag("alear_(female)_(fire_emblem)", escape=True) == r"alear \(female\) \(fire emblem\)"
    assert T.escape_brackets(r"a \(b\)") == r"a \(b\)"  # never escaped twice
    assert T.dedupe_tags(["long hair", "long_hair", "Long Hair", r"ask \(askzy\)", "ask (askzy)", "smile"]) == [
        "long hair", r"ask \(askzy\)", "smile"]
    assert T.split_tags("1girl, miku ||| long hair,, smile ") == ["1girl", "miku", "long hair", "smile"]
    assert T.sort_tags(["x", "b", "a"], keep_first=1) == ["x", "a", "b"]
    assert T.sort_tags(["a", "b", "c"], "frequency", {"c": 5, "b": 2}) == ["c", "b", "a"]
    assert T.remove_tags(["text", "english text", "text bubble", "smile"], ["*text*"]) == ["smile"]
    assert T.replace_tags(["1girl", "smile", "grin"], {"grin": "smile", "1girl": "woman, solo"}) == [
        "woman", "solo", "smile"]


def test_mcut_picks_the_largest_gap():
    assert T.mcut_threshold([0.9, 0.85, 0.3, 0.2]) == pytest.approx((0.85 + 0.3) / 2)
    assert T.mcut_threshold([0.5]) == 1.0


# ------------------------------------------------------------------------------------------------ preprocessing
def test_prepare_image_is_bgr_float_0_255():
    arr = W.prepare_image(Image.new("RGB", (8, 8), (10, 20, 30)), 8)
    assert arr.dtype == np.float32 and arr.shape == (8, 8, 3)
    assert arr[0, 0].tolist() == [30.0, 20.0, 10.0]  # B, G, R, not normalised


def test_prepare_image_pads_to_a_centred_white_square():
    arr = W.prepare_image(Image.new("RGB", (4, 2), (0, 0, 0)), 4)  # same size: no resize, exact pixels
    expected = np.full((4, 4, 3), 255.0, dtype=np.float32)
    expected[1:3, :, :] = 0.0  # rows (4-2)//2 .. +2 hold the image
    np.testing.assert_array_equal(arr, expected)
    tall = W.prepare_image(Image.new("RGB", (1, 3), (255, 0, 0)), 3)
    assert tall[:, 1].tolist() == [[0.0, 0.0, 255.0]] * 3 and tall[:, 0].tolist() == [[255.0] * 3] * 3


def test_prepare_image_composites_alpha_on_white_and_resizes_bicubic():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    arr = W.prepare_image(rgba, 2)
    assert arr[0, 0].tolist() == [255.0, 0.0, 0.0]      # opaque blue, in BGR
    assert arr[1, 1].tolist() == [255.0, 255.0, 255.0]  # transparent -> white, never black
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert W.prepare_image(pal, 2).min() == 255.0
    src = Image.new("RGB", (10, 10), (0, 128, 255))
    src.putpixel((3, 3), (255, 255, 255))
    arr = W.prepare_image(src, 7)
    expected = np.asarray(src.resize((7, 7), Image.BICUBIC), dtype=np.float32)[:, :, ::-1]
    np.testing.assert_array_equal(arr, expected)
    assert W.prepare_image(Image.new("L", (3, 3), 77), 3)[1, 1].tolist() == [77.0] * 3


# ------------------------------------------------------------------------------------------------ model path
def test_tiny_tagger_is_a_valid_onnx_model_with_dynamic_batch(tagger_dir, tagger):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(tagger_dir / W.MODEL_FILE))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [64, 64, 3]
    assert tagger.size == 64  # read from the model, not assumed to be 448
    header = (tagger_dir / W.TAGS_FILE).read_text(encoding="utf-8").splitlines()[0]
    assert header == "tag_id,name,category,count"


def test_model_sees_nhwc_bgr_and_matches_the_formula(tagger):
    images = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    arrays = [W.prepare_image(im, tagger.size) for im in images]
    probs = W.predict_batch(tagger, arrays)
    w, b = tiny_tagger_weights()
    expected = 1 / (1 + np.exp(-(np.stack([a.mean(axis=(0, 1)) for a in arrays]) / 255 @ w + b)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    names = [t[1] for t in TINY_TAGS]
    tops = [names[int(np.argmax(row[4:])) + 4] for row in probs]
    assert tops == ["red_theme", "blue_theme", "green_theme"]  # RGB in, BGR to the model: colours not swapped


def test_select_tags_thresholds_rating_and_order(tagger):
    names = [t[1] for t in TINY_TAGS]
    probs = np.full(len(names), 0.3, dtype=np.float32)  # every tag just under the 0.35 default
    probs[:4] = [0.1, 0.7, 0.2, 0.05]
    probs[names.index("alear_(female)_(fire_emblem)") + 1:] = 0.0
    probs[names.index("red_theme")] = 0.9
    probs[names.index("white_background")] = 0.35   # equal to the threshold: strict > drops it
    probs[names.index(">_<")] = 0.6
    probs[names.index("hatsune_miku")] = 0.86
    probs[names.index("alear_(female)_(fire_emblem)")] = 0.84
    pred = W.select_tags(probs, tagger.table)
    assert pred.rating == "sensitive"
    assert [n for n, _ in pred.general] == ["red_theme", ">_<"]
    assert [n for n, _ in pred.character] == ["hatsune_miku"]
    out = W.prediction_tags(pred, rating_tag="last", escape=True, undesired=["red theme"])
    assert out == ["hatsune miku", ">_<", "sensitive"]
    assert W.prediction_tags(pred, rating_tag="last", rating_words="kohaku")[-1] == "sensitive"
    pred.rating = "explicit"
    assert W.prediction_tags(pred, rating_tag="last", rating_words="kohaku")[-2:] == ["nsfw", "explicit"]
    pred.rating = "sensitive"
    out = W.prediction_tags(pred, character_first=False, rating_tag="first", always_first=[">_<"])
    assert out == ["sensitive", ">_<", "red theme", "hatsune miku"]
    mcut = W.select_tags(probs, tagger.table, general_mcut=True, character_mcut=True)
    assert [n for n, _ in mcut.general] == ["red_theme"]  # largest gap is 0.9 | 0.6
    assert [n for n, _ in mcut.character] == ["hatsune_miku"]  # gap 0.86 | 0.84 -> threshold 0.85
    probs[names.index("hatsune_miku")], probs[names.index("alear_(female)_(fire_emblem)")] = 0.12, 0.02
    assert W.select_tags(probs, tagger.table, character_mcut=True).character == []  # MCut 0.07, clamped to 0.15


def test_bad_tag_table_and_model_mismatch_are_named(tmp_path, tagger_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / W.MODEL_FILE).write_bytes((tagger_dir / W.MODEL_FILE).read_bytes())
    (bad / W.TAGS_FILE).write_text("tag_id,name,category,count\n9999999,general,9,1\n1,a,0,1\n", encoding="utf-8")
    with pytest.raises(W.TaggerError, match="4 rating rows"):
        W.load_tagger(bad, "cpu")
    rows = ["tag_id,name,category,count"] + [f"{i},{n},9,1" for i, n in enumerate(W.RATING_WORDS)] + ["9,a,0,1"]
    (bad / W.TAGS_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(W.TaggerError, match="15 outputs but selected_tags.csv lists 5"):
        W.load_tagger(bad, "cpu")
    with pytest.raises(W.TaggerError, match="not a tagger folder"):
        W.load_tagger(tmp_path, "cpu")


def test_providers_cpu_fallback_and_cuda_mismatch_error():
    assert W.choose_providers("auto", ["CPUExecutionProvider"], has_gpu=False) == ["CPUExecutionProvider"]
    assert W.choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], has_gpu=True)[0] == \
        "CUDAExecutionProvider"
    with pytest.raises(W.TaggerError, match="has a GPU, but onnxruntime .* has no CUDA provider.*onnxruntime-gpu"):
        W.choose_providers("auto", ["CPUExecutionProvider"], has_gpu=True)
    with pytest.raises(W.TaggerError, match="no CUDA provider"):
        W.choose_providers("cuda", ["CPUExecutionProvider"], has_gpu=False)
    assert "CUDA" in W.describe_cuda_mismatch()


def test_fetch_tagger_downloads_once_into_the_workspace(tmp_path, tagger_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, revision=None, token=None, local_dir=None):
        calls.append((repo_id, filename, revision))
        target = Path(local_dir) / filename
        target.write_bytes((tagger_dir / filename).read_bytes())
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    folder = W.fetch_tagger("eva02-large-v3", tmp_path / "models")
    assert folder == tmp_path / "models" / "wd-eva02-large-tagger-v3"
    assert {c[1] for c in calls} == {W.MODEL_FILE, W.TAGS_FILE}
    assert calls[0][0] == "SmilingWolf/wd-eva02-large-tagger-v3"
    assert json.loads((folder / W.SOURCE_FILE).read_text())["repo"] == "SmilingWolf/wd-eva02-large-tagger-v3"
    W.fetch_tagger("eva02-large-v3", tmp_path / "models")
    assert len(calls) == 2  # second call reuses the folder
    assert W.fetch_tagger(str(tagger_dir), tmp_path / "models") == tagger_dir

    def failing(**kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(W.TaggerError, match="could not download selected_tags.csv of SmilingWolf/wd-vit-tagger-v3"):
        W.fetch_tagger("vit-v3", tmp_path / "models")
    with pytest.raises(W.TaggerError, match="unknown tagger"):
        W.fetch_tagger("nonsense", tmp_path / "models")


def test_tagger_repo_names():
    assert W.tagger_repo("swinv2-v3") == "SmilingWolf/wd-swinv2-tagger-v3"
    assert W.tagger_repo("someone/custom-tagger") == "someone/custom-tagger"


# ------------------------------------------------------------------------------------------------ datasets
def _dataset(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"red": folder / "red.png", "blue": folder / "blue.jpg", "broken": folder / "broken.png",
             "latin1": folder / "latin1.png", "tagged": folder / "tagged.png"}
    Image.new("RGB", (48, 32), (250, 10, 10)).save(paths["red"])
    Image.new("RGB", (32, 32), (10, 10, 250)).save(paths["blue"])
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (32, 32), (10, 250, 10)).save(paths["latin1"])
    caption_path(paths["latin1"]).write_bytes("caf\xe9 au lait".encode("latin-1"))
    Image.new("RGB", (32, 32), (10, 250, 10)).save(paths["tagged"])
    caption_path(paths["red"]).write_text("a red square", encoding="utf-8")
    caption_path(paths["tagged"]).write_text("green theme, solo, simple background", encoding="utf-8")
    return paths


def test_tag_dataset_end_to_end_with_bad_input_and_undo(tmp_path, tagger):
    paths = _dataset(tmp_path / "ds")
    latin1_bytes = caption_path(paths["latin1"]).read_bytes()
    cfg = W.TaggerConfig(model=str(tagger.folder), rating_tag="last")
    report = W.tag_dataset(tmp_path / "ds", cfg, tmp_path / "models", render=RenderConfig(), progress=False,
                           tagger=tagger)
    assert report.tagged == 2 and report.skipped == 1  # "tagged.png" already has tags
    assert set(report.problems) == {paths["broken"], paths["latin1"]}
    assert "unreadable image" in report.problems[paths["broken"]]
    assert "not UTF-8" in report.problems[paths["latin1"]]
    assert caption_path(paths["latin1"]).read_bytes() == latin1_bytes  # reported, not overwritten
    assert not caption_path(paths["latin1"], SIDECAR_EXT).exists()
    red = load_record(paths["red"])
    assert red.captions == {"original": "a red square"}  # the user's caption is kept apart from the tags
    assert "red theme" in red.tags and red.tags[-1] == "general" and red.rating == "general"
    assert red.sources["tags"] == "tunebook/tiny-tagger" and 0.5 < red.scores["red theme"] <= 1
    assert read_caption(paths["red"]).startswith("a red square, ")
    assert read_caption(paths["blue"]).startswith("hatsune miku, blue theme")  # character tags first
    # modes: append keeps existing tags first, and skip_tagged=False re-tags
    again = W.tag_dataset(tmp_path / "ds", W.TaggerConfig(model=str(tagger.folder), skip_tagged=False,
                                                          mode="prepend"), tmp_path / "models",
                          progress=False, tagger=tagger)
    assert again.tagged == 3
    retagged = load_record(paths["tagged"]).tags
    assert retagged[0] == "hatsune miku" and retagged[-1] == "solo"  # new tags first, old ones kept, no repeats
    assert len(retagged) == len(set(retagged))
    undo_edit(again.edit)
    undo_edit(report.edit)
    assert read_caption(paths["red"]) == "a red square"
    assert not caption_path(paths["blue"]).exists() and not caption_path(paths["red"], SIDECAR_EXT).exists()


def test_merge_modes():
    assert W.merge_tags(["a", "b"], ["b", "c"], "overwrite") == ["b", "c"]
    assert W.merge_tags(["a", "b"], ["b", "c"], "append") == ["a", "b", "c"]
    assert W.merge_tags(["a", "b"], ["b", "c"], "prepend") == ["b", "c", "a"]


def test_fetch_tagger_with_real_huggingface_hub_code_against_a_local_endpoint(tmp_path, tagger_dir):
    """hf_hub_download itself (not a stub) talks to a local server that answers like the Hub's resolve URLs."""
    import hashlib
    import http.server
    import os
    import subprocess
    import sys
    import threading

    files = {name: (tagger_dir / name).read_bytes() for name in (W.MODEL_FILE, W.TAGS_FILE)}
    seen = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def reply(self, body: bool):
            parts = self.path.split("?")[0].strip("/").split("/")  # owner/name/resolve/revision/file
            seen.append(self.path)
            if len(parts) == 5 and parts[:3] == ["SmilingWolf", "wd-vit-tagger-v3", "resolve"] and parts[4] in files:
                data = files[parts[4]]
                self.send_response(200)
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
            else:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.end_headers()

        def do_HEAD(self):
            self.reply(False)

        def do_GET(self):
            self.reply(True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HUB_OFFLINE="0",
               HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    code = ("import json, sys\nfrom helpers.captioning.wd_tagger import fetch_tagger, load_tagger, TaggerError\n"
            "out = [load_tagger(fetch_tagger('vit-v3', sys.argv[1]), 'cpu').size]\n"
            "try:\n    fetch_tagger('someone/no-such-tagger', sys.argv[1])\n"
            "except TaggerError as exc:\n    out.append(str(exc))\n"
            "print(json.dumps(out))")
    try:
        ok = subprocess.run([sys.executable, "-c", code, str(tmp_path / "models")], env=env,
                            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert ok.returncode == 0, ok.stderr[-2000:]
    size, error = json.loads(ok.stdout.strip().splitlines()[-1])
    assert size == 64  # the downloaded model opens, its input size read from it
    assert (tmp_path / "models" / "wd-vit-tagger-v3" / W.MODEL_FILE).read_bytes() == files[W.MODEL_FILE]
    assert any(p.endswith("/resolve/main/model.onnx") for p in seen)
    assert "could not download selected_tags.csv of someone/no-such-tagger" in error


def test_cuda_provider_that_fails_to_start_is_an_error_naming_versions(tagger_dir, monkeypatch):
    """onnxruntime-gpu whose CUDA libraries do not load falls back to the CPU silently; we refuse instead."""
    import onnxruntime as ort

    real_session = ort.InferenceSession

    class FallbackSession(real_session):
        def __init__(self, path, providers=None, **kwargs):
            assert providers[0] == "CUDAExecutionProvider"
            super().__init__(path, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallbackSession)
    with pytest.raises(W.TaggerError, match=r"could not start its CUDA provider: onnxruntime .* built for CUDA .*torch"):
        W.load_tagger(tagger_dir, device="cuda")
