"""Dataset check and clean on a generated corpus of bad images: each gets its reason, nothing crashes, nothing is lost."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from helpers.changes import undo_changes
from helpers.dataset.__main__ import main as dataset_main
from helpers.dataset.caption_files import read_caption
from helpers.dataset.check import check_dataset, inspect_image
from helpers.dataset.demo import draw_demo_image, make_demo_dataset
from helpers.dataset.files import list_images, parse_repeat_folder
from helpers.dataset.fix import fix_images, layout_repeat_folder, reject_files
from helpers.dataset.report import dataset_report, duplicates_sheet, problems_sheet, resolution_histogram


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow will not write (48-bit RGB, a lying header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _picture(size=(512, 512), seed=1, shape="circle") -> Image.Image:
    return draw_demo_image(shape, "red", "blue", size, seed)


def _save(img: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kwargs)
    return path


def make_bad_corpus(root: Path) -> dict[str, tuple[str, str | None]]:
    """Write one file per case; returns {relative name: (expected status, expected problem code)}."""
    cases: dict[str, tuple[str, str | None]] = {}
    _save(_picture(), root / "good.png", "PNG")
    cases["good.png"] = ("ok", None)
    (root / "empty.jpg").write_bytes(b"")
    cases["empty.jpg"] = ("rejected", "empty")
    (root / "not an image.png").write_text("<html>an error page saved as png</html>")
    cases["not an image.png"] = ("rejected", "not_image")
    jpeg = io.BytesIO()
    _picture(seed=2).save(jpeg, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    cases["truncated.jpg"] = ("rejected", "truncated")
    png = io.BytesIO()
    _picture(seed=3, shape="square").save(png, "PNG")
    (root / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) * 2 // 3])
    cases["truncated.png"] = ("rejected", "truncated")
    (root / "jpeg named png.png").write_bytes(jpeg.getvalue())
    cases["jpeg named png.png"] = ("fixable", "wrong_extension")
    frames = [_picture(seed=4, shape="triangle"), _picture(seed=5, shape="square")]
    _save(frames[0], root / "animated.webp", "WEBP", save_all=True, append_images=frames[1:], duration=100)
    cases["animated.webp"] = ("fixable", "animated")
    _save(_picture(seed=6).convert("CMYK"), root / "cmyk.jpg", "JPEG")
    cases["cmyk.jpg"] = ("fixable", "cmyk")
    _save(Image.new("I;16", (300, 300), 40000), root / "gray16.png", "PNG")
    cases["gray16.png"] = ("fixable", "16bit")
    rows = b"".join(b"\x00" + bytes([0x80, 0x00, 0x10, 0x00, 0xF0, 0x00]) * 300 for _ in range(300))
    (root / "rgb48.png").write_bytes(_raw_png(300, 300, 16, 2, rows))
    cases["rgb48.png"] = ("fixable", "16bit")
    pal = _picture(seed=7).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    _save(pal, root / "palette alpha.png", "PNG", transparency=0)
    cases["palette alpha.png"] = ("fixable", "palette_transparency")
    rgba = _picture(seed=8, shape="square").convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).point(lambda _: 128))
    _save(rgba, root / "alpha.png", "PNG")
    cases["alpha.png"] = ("fixable", "transparency")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _save(_picture((640, 480), seed=9), root / "rotated.jpg", "JPEG", exif=exif.tobytes())
    cases["rotated.jpg"] = ("fixable", "exif_rotated")
    _save(_picture((100, 120), seed=10), root / "small.png", "PNG")
    cases["small.png"] = ("rejected", "too_small")
    (root / "bomb.png").write_bytes(_raw_png(100_000, 100_000, 8, 2, b"\x00" * 10))
    cases["bomb.png"] = ("rejected", "bomb")
    _save(_picture(seed=11, shape="triangle"), root / "static.gif", "GIF")
    cases["static.gif"] = ("fixable", "unsupported_format")
    (root / "readme.md").write_text("notes")
    cases["readme.md"] = ("ignored", None)
    (root / "windows caption.txt").write_bytes("caf\xe9 au lait".encode("cp1252"))
    cases["windows caption.txt"] = ("rejected", "caption_encoding")
    return cases


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root, make_bad_corpus(root)


def test_list_images_skips_rejected_hidden_and_others(tmp_path):
    for rel in ["b.png", "a.JPG", "sub/c.webp", "10_cat/d.jpeg", "_rejected/x.png", ".hidden/y.png", ".z.png",
                "e.gif", "f.txt", "g.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [str(p.relative_to(tmp_path)) for p in list_images(tmp_path)]
    assert got == ["10_cat/d.jpeg", "a.JPG", "b.png", "g.bmp", "sub/c.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.JPG", "b.png", "g.bmp"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(tmp_path / "nope")


def test_demo_dataset_has_filename_captions_and_varied_sizes(tmp_path):
    folder = make_demo_dataset(tmp_path / "demo", n=12)
    images = list_images(folder)
    assert len(images) == 12
    assert any(" (2)" in p.stem for p in images) and any(p.stem.endswith(" copy") for p in images)
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) >= 4 and any(w != h for w, h in sizes)
    assert {p.suffix for p in images} == {".png", ".jpg", ".webp"}
    with pytest.raises(FileExistsError):
        make_demo_dataset(folder, n=1)
    check = check_dataset(folder, progress=False)
    assert all(f.status == "ok" for f in check.files)


def test_every_bad_case_gets_its_reason(corpus):
    root, cases = corpus
    check = check_dataset(root, progress=False)
    by_name = {str(f.path.relative_to(root)): f for f in check.files}
    assert set(by_name) == set(cases)
    for name, (status, code) in cases.items():
        f = by_name[name]
        assert f.status == status, (name, f.status, f.reasons)
        if code:
            assert code in f.problems, (name, f.problems)
            assert f.reasons and all(isinstance(r, str) and r for r in f.reasons)
    assert by_name["good.png"].problems == [] and by_name["good.png"].has_caption is False
    assert "web page" in by_name["not an image.png"].reasons[0]
    assert (by_name["rotated.jpg"].width, by_name["rotated.jpg"].height) == (480, 640)  # as displayed


def test_max_pixels_and_min_side_are_settings(tmp_path):
    path = _save(_picture((400, 300)), tmp_path / "a.png", "PNG")
    assert inspect_image(path).status == "ok"
    assert inspect_image(path, max_pixels=100_000).problems == ["bomb"]
    assert inspect_image(path, min_side=512).problems == ["too_small"]


def test_fix_and_reject_lose_nothing_and_undo(corpus):
    root, cases = corpus
    (root / "small.txt").write_text("a small picture", encoding="utf-8")
    (root / "small.png.json").write_text("{}", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    check = check_dataset(root, progress=False)

    fixed = fix_images(check.files, root, background=(0, 255, 0), progress=False)
    assert not fixed.failed
    assert {Path(a).name for a, _, _ in fixed.fixed} == {n for n, (s, _) in cases.items() if s == "fixable"}
    rejected = reject_files(check.files, root)
    assert {a.name for a, _ in rejected.rejected} == {n for n, (s, _) in cases.items() if s == "rejected"}

    # rejected files (with caption and metadata) are in _rejected/, with their reasons
    assert (root / "_rejected" / "small.png").exists() and (root / "_rejected" / "small.txt").exists()
    assert (root / "_rejected" / "small.png.json").exists()
    reasons = [json.loads(line) for line in (root / "_rejected" / "reasons.jsonl").read_text().splitlines()]
    assert {r["file"] for r in reasons} == {a.name for a, _ in rejected.rejected}
    assert all(r["reasons"] for r in reasons)

    # after fixing, every remaining image is clean 8-bit RGB
    again = check_dataset(root, progress=False)
    assert [f.path.name for f in again.images if f.status != "ok"] == []
    assert (root / "jpeg named png.jpg").exists() and not (root / "jpeg named png.png").exists()
    assert (root / "static.png").exists() and not (root / "static.gif").exists()
    flat = Image.open(root / "alpha.png")
    assert flat.mode == "RGB" and flat.getpixel((0, 0))[1] > 100  # half-transparent blue over green
    assert Image.open(root / "rotated.jpg").size == (480, 640)
    assert Image.open(root / "animated.webp").n_frames == 1

    # every original's bytes are still somewhere: in place, renamed, in _rejected/, or in the fix backup
    everything = {p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for name, data in before.items():
        assert data in everything, name

    # both steps undo
    undo_changes(rejected.backup_dir)
    undo_changes(fixed.backup_dir)
    after = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    assert after == before


def test_duplicates_exact_and_near(tmp_path):
    pic = _picture((512, 512), seed=20)
    _save(pic, tmp_path / "a.png", "PNG")
    shutil.copy(tmp_path / "a.png", tmp_path / "a copy.png")
    _save(pic.resize((384, 384)), tmp_path / "a smaller.jpg", "JPEG", quality=85)
    _save(_picture((512, 512), seed=21, shape="triangle").rotate(90), tmp_path / "other.png", "PNG")
    check = check_dataset(tmp_path, progress=False)
    assert [[p.name for p in g] for g in check.exact_duplicates] == [["a copy.png", "a.png"]]
    assert [sorted(p.name for p in g) for g in check.near_duplicates] == [["a copy.png", "a smaller.jpg"]]


def test_report_buckets_captions_and_repeat_folders(tmp_path):
    root = tmp_path / "ds"
    _save(_picture((1024, 1024)), root / "10_cat" / "a.png", "PNG")
    _save(_picture((832, 1216), seed=2), root / "10_cat" / "b.png", "PNG")
    (root / "10_cat" / "a.txt").write_text("a cat", encoding="utf-8")
    _save(_picture((512, 384), seed=3), root / "2_dog" / "c.jpg", "JPEG")
    _save(_picture((600, 600), seed=4), root / "loose.png", "PNG")
    (root / "orphan.txt").write_text("no image", encoding="utf-8")
    report = dataset_report(check_dataset(root, progress=False), resolution=1024)
    assert report["buckets"] == {"1024x1024": 2, "832x1216": 1, "1152x896": 1}
    assert sorted(report["below_resolution"]) == ["2_dog/c.jpg", "loose.png"]
    assert sorted(report["missing_captions"]) == ["10_cat/b.png", "2_dog/c.jpg", "loose.png"]
    assert report["orphan_captions"] == ["orphan.txt"]
    assert [(f["folder"], f["repeats"], f["images"]) for f in report["repeat_folders"]] == [
        ("10_cat", 10, 2), ("2_dog", 2, 1)]
    assert report["layout"] == "mixed" and any("loose" in w or "directly" in w for w in report["warnings"])
    # what our trainer reads: 10 x 2 + 2 x 1 + the loose image once (kohya would skip it; the warning says so)
    assert report["samples_per_epoch"] == 23 and report["trained_images"] == 4
    assert parse_repeat_folder("5_my_char") == (5, "my_char") and parse_repeat_folder("cat") is None
    assert parse_repeat_folder("0_x") == (0, "x")  # a 0-repeat folder is a repeat folder that trains nothing


def test_layout_repeat_folder_moves_sidecars(tmp_path):
    _save(_picture(), tmp_path / "a.png", "PNG")
    (tmp_path / "a.txt").write_text("cap", encoding="utf-8")
    (tmp_path / "a.png.json").write_text("{}", encoding="utf-8")
    (tmp_path / "a.captions.json").write_text("{}", encoding="utf-8")
    target = layout_repeat_folder(tmp_path, 3, "xxcc")
    assert target.name == "3_xxcc"
    assert read_caption(target / "a.png") == "cap" and (target / "a.png.json").exists()
    assert (target / "a.captions.json").exists() and not list(tmp_path.glob("a.*"))
    with pytest.raises(ValueError, match="repeats"):
        layout_repeat_folder(tmp_path, 0, "x")


def test_pictures_for_people(corpus):
    root, _ = corpus
    check = check_dataset(root, progress=False)
    sheet = problems_sheet(check)
    assert sheet is not None and sheet.width > 100
    assert resolution_histogram(check) is not None
    assert duplicates_sheet(check) is None  # no duplicates in this corpus


def test_cli_json_lists_every_file_and_exits_zero(corpus, capsys):
    root, cases = corpus
    assert dataset_main(["check", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    listed = {f["path"]: f for f in data["check"]["files"]}
    assert set(listed) == set(cases)
    assert listed["empty.jpg"]["status"] == "rejected" and listed["empty.jpg"]["reasons"]
    assert data["check"]["counts"]["rejected"] == sum(1 for s, _ in cases.values() if s == "rejected")
    assert data["report"]["counts"]["rejected"] == sum(1 for n, (s, _) in cases.items()
                                                       if s == "rejected" and not n.endswith(".txt"))
    assert dataset_main(["check", str(root / "missing")]) == 2


def test_cli_as_a_program_with_pictures(corpus, tmp_path):
    import subprocess
    import sys

    root, _ = corpus
    out = subprocess.run([sys.executable, "-m", "helpers.dataset", "check", str(root), "--sheets",
                          str(tmp_path / "sheets")], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert "rejected" in out.stdout and "truncated" in out.stdout
    assert (tmp_path / "sheets" / "problems.png").exists() and (tmp_path / "sheets" / "resolution.png").exists()
    bad = subprocess.run([sys.executable, "-m", "helpers.dataset", "check", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and "no such folder" in bad.stderr
