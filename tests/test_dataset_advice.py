"""Dataset advice: the shared encoder loader (Hub download through a loopback fake Hub), the composition report,
ESRGAN-family upscalers and the undoable upscale step, on tiny random-weight models built offline."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.changes import sha256_file, undo_changes
from helpers.dataset import composition as C
from helpers.dataset.demo import make_demo_dataset
from helpers.dataset.report import REPORT_NAME
from helpers.dataset.upscale import images_to_upscale, needed_factor, upscale_images
from helpers.models import encoders as E
from helpers.models import upscalers as U


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return E.build_tiny_clip(tmp_path_factory.mktemp("enc") / "tiny-clip")


# ---------------------------------------------------------------------------------------------- composition
def test_category_counts_on_a_constructed_embedding_set():
    """Images pointing at category directions are counted there; a mixed image counts twice; an image near
    none of them is unclassified."""
    eye = np.eye(4, dtype=np.float32)
    images = np.stack([eye[0], eye[0], eye[0], eye[1], (eye[0] + eye[2]) / np.sqrt(2), eye[3]])
    prompts = np.stack([eye[0], eye[1], eye[2], -eye[3]])  # the last category has two prompts
    owner = np.array([0, 1, 2, 2])
    sims = C.category_similarity(images, prompts, owner, 3)
    probs = C.zero_shot_probabilities(sims, logit_scale=100.0)
    labels = C.multi_labels(probs, threshold=0.4)
    assert labels.sum(axis=0).tolist() == [4, 1, 1]
    assert labels[4].tolist() == [True, False, True]  # the mixed image counts in both of its categories
    assert np.allclose(probs[5], 1 / 3, atol=1e-6) and not labels[5].any()  # near none: unclassified at 0.4
    assert C.multi_labels(probs, threshold=0.3)[5].all()  # ... but counted everywhere at a threshold below 1/3
    cats = C.parse_categories(["animals", "sky: the sky", "fire, smoke"])
    result = C.Composition(Path("/d"), "test", 0.4, cats, [Path(f"/d/{i}.png") for i in range(6)], probs,
                           C.multi_labels(probs, 0.4))
    assert result.counts == {"animals": 4, "sky": 1, "fire, smoke": 1}
    assert result.unclassified == [Path("/d/5.png")]
    bal = C.balance(result.counts, over_factor=2.0)
    assert bal["mean"] == 2.0 and bal["band"] == [1.0, 4.0] and bal["over"] == bal["under"] == []
    assert C.balance({"a": 9, "b": 1, "c": 0, "d": 2}, 2.0)["missing"] == ["c"]
    assert C.balance({"a": 9, "b": 1, "c": 0, "d": 2}, 2.0)["over"] == ["a"]


def test_category_lines_parse_and_bad_ones_are_named():
    cats = C.parse_categories(["men - young [person]: a young man | a boy", "fire, smoke", "", "ruins [scene]"])
    assert [(c.name, c.prompts, c.kind) for c in cats] == [
        ("men - young", ("a young man", "a boy"), "person"), ("fire, smoke", ("fire", "smoke"), ""),
        ("ruins", ("ruins",), "scene")]
    with pytest.raises(ValueError, match="no categories"):
        C.parse_categories(["", "  "])
    with pytest.raises(ValueError, match="listed twice"):
        C.parse_categories(["sky", "Sky: the sky"])
    with pytest.raises(ValueError, match="empty name or prompt"):
        C.parse_categories(["sky: the sky | "])
    assert len(C.parse_categories(C.preset_lines("style"))) == 24  # the guide's list, "+ anything else" aside


def test_composition_of_a_dataset_with_a_tiny_encoder(tmp_path, tiny_clip):
    folder = make_demo_dataset(tmp_path / "ds", 6)
    encoder = E.load_encoder(str(tiny_clip), tmp_path / "models", "cpu")
    cfg = C.CompositionConfig(preset="character", threshold=0.2)
    result = C.analyse_composition(folder, cfg, encoder, tmp_path / "cache", progress=False)
    data = result.to_dict()
    assert data["images"] == 6 and set(data["counts"]) == {c.name for c in C.categories_for(cfg)}
    per_image = data["per_image"]
    assert sum(len(v["categories"]) for v in per_image.values()) == sum(data["counts"].values())
    assert all(p >= 0.2 for v in per_image.values() for p in v["categories"].values())
    assert sum(data["shots"].values()) == 6  # the character preset has no person-less images: all get a shot
    written = C.write_composition(result, tmp_path / "out")
    assert json.loads(Path(written["composition numbers"]).read_text())["counts"] == data["counts"]
    assert Image.open(written["composition chart"]).size[0] > 300
    sheets = sorted((tmp_path / "out" / "sheets").glob("*.png"))
    assert len(sheets) == sum(1 for n in data["counts"].values() if n)
    # the embeddings are cached by content: a second run embeds nothing, a changed image again
    from helpers.dataset.embeddings import embed_image_files

    paths = sorted(folder.iterdir())
    again = embed_image_files(encoder, paths, tmp_path / "cache", progress=False)
    assert again.cached == 6 and np.allclose(again.vectors[0] @ again.vectors[0], 1.0, atol=1e-5)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(paths[0], format=Image.open(paths[0]).format)
    assert embed_image_files(encoder, paths, tmp_path / "cache", progress=False).cached == 5


def test_composition_bad_input_changes_nothing(tmp_path, tiny_clip):
    encoder = E.load_encoder(str(tiny_clip), tmp_path, "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images to classify"):
        C.analyse_composition(tmp_path / "empty", C.CompositionConfig(), encoder, tmp_path / "cache")
    with pytest.raises(ValueError, match="empty name or prompt"):
        C.analyse_composition(tmp_path / "empty", C.CompositionConfig(categories=["a: "]), encoder, tmp_path / "c")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------- encoder download
class FakeHub(http.server.BaseHTTPRequestHandler):
    """The Hub endpoints ``snapshot_download`` uses: repo info, the file tree and file downloads."""

    protocol_version = "HTTP/1.1"
    repos: dict[str, dict[str, bytes]] = {}

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.reply(head=True)

    def do_GET(self):
        self.reply(head=False)

    def send(self, code: int, body: bytes, headers: dict[str, str], head: bool):
        self.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def reply(self, head: bool):
        path = self.path.split("?")[0]
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
        if m and m.group(1) in self.repos:
            info = {"id": m.group(1), "sha": "a" * 40, "siblings": [{"rfilename": f} for f in self.repos[m.group(1)]]}
            return self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/[^/]+$", path)
        if m and m.group(1) in self.repos:
            listing = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                       for f, b in self.repos[m.group(1)].items()]
            return self.send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
        if m and m.group(2) in self.repos.get(m.group(1), {}):
            body = self.repos[m.group(1)][m.group(2)]
            return self.send(200, body, {"X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}, head)
        self.send(404, b"{}", {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield FakeHub.repos, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    FakeHub.repos.clear()


def test_encoder_is_downloaded_into_the_workspace_once_and_loads(fake_hub, tmp_path, tiny_clip):
    repos, url = fake_hub
    repos["me/tiny-clip"] = {p.name: p.read_bytes() for p in tiny_clip.iterdir()} | {"pytorch_model.bin": b"x"}
    models = tmp_path / "models"
    enc = E.load_encoder("me/tiny-clip", models, "cpu", endpoint=url)
    assert (models / "tiny-clip" / "model.safetensors").read_bytes() == (tiny_clip / "model.safetensors").read_bytes()
    assert not (models / "tiny-clip" / "pytorch_model.bin").exists()  # pickled weights never fetched
    rows = enc.embed_texts(["a cat", "a dog", "a cat"])
    assert rows.shape == (3, 16) and np.allclose(rows[0], rows[2]) and np.allclose((rows ** 2).sum(1), 1, atol=1e-5)
    repos.clear()  # the second load finds the folder and never asks the Hub
    assert E.load_encoder("me/tiny-clip", models, "cpu", endpoint=url).fingerprint == enc.fingerprint
    with pytest.raises(E.EncoderError, match="could not download someone/missing"):
        E.fetch_encoder("someone/missing", models, endpoint=url)
    with pytest.raises(E.EncoderError, match="unknown encoder"):
        E.fetch_encoder("not-a-name", models)


# ---------------------------------------------------------------------------------------------- upscalers
def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("arch,scale", [("rrdb-new", 4), ("rrdb-old", 4), ("rrdb-new", 2), ("srvgg", 4)])
def test_upscaler_architecture_scale_and_size_are_read_from_the_file(tmp_path, arch, scale):
    path = U.save_tiny_upscaler(tmp_path / f"m{'.safetensors' if arch == 'rrdb-old' else '.pth'}", arch, scale)
    up = U.load_upscaler(str(path), tmp_path, "cpu")
    assert up.scale == scale and up.description.startswith("SRVGGNetCompact" if arch == "srvgg" else "RRDBNet")
    assert U.upscale_image(up, _image(21, 13), tile=8).size == (21 * scale, 13 * scale)


def test_old_and_new_rrdb_layouts_are_the_same_network():
    new, old = U.tiny_rrdb_state("new", seed=3), U.tiny_rrdb_state("old", seed=3)
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old and "body.0.rdb1.conv1.weight" in new
    nets = []
    for state in (new, old):
        spec = U.detect_upscaler(state)
        net = spec.build()
        net.load_state_dict(spec.state, strict=True)
        nets.append(net.eval())
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(nets[0](x), nets[1](x))
    spec = U.detect_upscaler({k.replace("conv_up", "upconv").replace("conv_body", "trunk_conv").replace(
        "conv_hr", "HRconv").replace("body.", "RRDB_trunk.").replace("rdb", "RDB"): v for k, v in new.items()})
    assert spec.params["nb"] == 2 and spec.scale == 4  # the BSRGAN layout too


def test_real_size_rrdbnet_is_recognised():
    net = U.RRDBNet()  # RealESRGAN_x4plus: 64 features, 23 blocks, growth 32
    state = {re.sub(r"^conv_up\.(\d)", lambda m: f"conv_up{int(m.group(1)) + 1}", k): v
             for k, v in net.state_dict().items()}
    spec = U.detect_upscaler({"params_ema": state})
    assert (spec.scale, spec.params["nf"], spec.params["nb"], spec.params["gc"]) == (4, 64, 23, 32)


def test_tiles_join_without_seams(tmp_path):
    up = U.load_upscaler(str(U.save_tiny_upscaler(tmp_path / "m.pth", "rrdb-new")), tmp_path, "cpu")
    image = _image(37, 29, seed=1)
    whole = np.asarray(U.upscale_image(up, image, tile=64), dtype=int)
    tiled = np.asarray(U.upscale_image(up, image, tile=8), dtype=int)
    assert np.abs(whole - tiled).max() <= 1


def test_out_of_memory_halves_the_tile_and_says_so(tmp_path):
    up = U.load_upscaler(str(U.save_tiny_upscaler(tmp_path / "m.pth", "srvgg")), tmp_path, "cpu")
    inner = up.module

    class SmallMemory(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] * x.shape[-2] > 50 * 50:  # a 64-px tile with its context is too big, 32 fits
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return inner(x)

    up.module = SmallMemory()
    out = U.upscale_image(up, _image(60, 50), tile=64)
    assert out.size == (240, 200)
    assert up.notes == ["out of GPU memory: tile reduced to 32 px"]
    with pytest.raises(U.UpscalerError, match="does not fit .* even with 32-px tiles"):
        up.module = type("NoMemory", (torch.nn.Module,), {"forward": lambda self, x: (_ for _ in ()).throw(
            torch.OutOfMemoryError("out of memory"))})()
        U.upscale_image(up, _image(60, 50), tile=64)


def test_unknown_architectures_and_code_pickles_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(U.UpscalerError, match="not an upscaler architecture tunebook knows .*RRDBNet.*"
                                              "SRVGGNetCompact.*spandrel"):
        U.load_upscaler(str(tmp_path / "other.safetensors"), tmp_path, "cpu")
    torch.save({"model": U.SRVGGNetCompact(nf=4, num_conv=1)}, tmp_path / "pickled.pth")  # a whole module: code
    with pytest.raises(U.UpscalerError, match="does not run pickles that need code"):
        U.read_state_dict(tmp_path / "pickled.pth")
    with pytest.raises(U.UpscalerError, match="no such file"):
        U.fetch_upscaler("missing.pth", tmp_path)


# ---------------------------------------------------------------------------------------------- upscale step
def test_images_below_the_resolution_are_listed_with_their_factor(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for name, size in {"small.png": (300, 200), "wide.png": (2000, 500), "big.png": (1200, 1100)}.items():
        Image.new("RGB", size).save(folder / name)
    short = {i.path.name: round(i.factor, 3) for i in images_to_upscale(folder, 1000)}
    assert short == {"small.png": 5.0, "wide.png": 2.0}
    assert [i.path.name for i in images_to_upscale(folder, 1000, "area")] == ["small.png"]
    assert needed_factor(300, 200, 1000, "area") == pytest.approx(1000 / np.sqrt(60000))


def test_upscaled_image_moves_with_its_captions_and_undo_restores_bytes(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    _image(30, 20).save(folder / "a.jpg", quality=90)
    (folder / "a.txt").write_text("a woman wearing kncr outfit")
    (folder / "a.captions.json").write_text('{"format_version": 1, "tags": ["kncr"]}')
    (folder / "a.jpg.json").write_text('{"id": 1}')
    _image(40, 40, seed=2).save(folder / "b.png")  # same format: replaced in place
    _image(24, 24, seed=3).save(folder / "c.jpg")  # c.png exists: the upscaled c.jpg gets a free name
    _image(80, 80, seed=4).save(folder / "c.png")
    (folder / "c.txt").write_text("shared by c.jpg and c.png")
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    up = U.load_upscaler(str(U.save_tiny_upscaler(tmp_path / "m.pth", "srvgg")), tmp_path, "cpu")
    items = images_to_upscale(folder, 64)
    result = upscale_images(items, up, root=folder, progress=False)
    assert not result.failed and len(result.upscaled) == 3
    assert Image.open(folder / "a.png").size == (96, 64)  # short side 20 -> 64, aspect kept
    assert Image.open(folder / "b.png").size == (64, 64)
    assert Image.open(folder / "c (2).png").size == (64, 64) and Image.open(folder / "c.png").size == (80, 80)
    assert not (folder / "a.jpg").exists()
    assert (folder / "a.txt").read_text() == "a woman wearing kncr outfit"  # x.txt belongs to x.png too
    assert (folder / "a.captions.json").exists() and (folder / "a.png.json").read_text() == '{"id": 1}'
    assert not (folder / "a.jpg.json").exists()
    assert (folder / "c (2).txt").read_text() == (folder / "c.txt").read_text()  # copied, c.png keeps its own
    assert result.sheet is not None and result.sheet.width == 3 * (192 + 6) + 6
    undone = undo_changes(result.backup_dir)
    assert not undone.conflicts
    after = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file()}
    assert after == before  # byte for byte, and nothing left behind


def test_demo_runs_the_advice_steps(demo_workspace):
    advice = Path(demo_workspace) / "cache" / "dataset-advice"
    numbers = json.loads((advice / "demo" / "composition.json").read_text())
    assert numbers["images"] == 12 and len(numbers["counts"]) == 24
    report = json.loads((Path(demo_workspace) / "datasets" / "demo" / REPORT_NAME).read_text())
    assert report["composition"]["counts"] == numbers["counts"] and "report" in report
    assert Image.open(advice / "demo-upscale-copy" / "upscale-before-after.png").height > 100
    triggers = json.loads((advice / "demo" / "triggers.json").read_text())
    assert [t["verdict"] for t in triggers["triggers"]] == ["check", "change"]
