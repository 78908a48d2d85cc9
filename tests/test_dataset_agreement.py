"""The dataset check and the trainer must agree, image by image, on what training reads.

One corpus with every layout case a user meets (nested folders, kohya ``N_name`` and ``0_name`` folders, parked
``_`` and hidden folders, .avif / .webp / .jxl and mixed-case extensions, multi-line captions, .caption vs .txt,
a caption without an image, images without captions, a truncated image, a non-UTF-8 caption, a GIF) is read by
``check_dataset`` (notebook 01) and by ``scan_dataset`` (the trainer); the images, captions and repeats must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from helpers.dataset.check import check_dataset
from helpers.dataset.files import IMAGE_EXTENSIONS
from helpers.dataset.report import dataset_report
from helpers.training.data import scan_dataset


def _image(path: Path, fmt: str, size=(320, 288), colour=(200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)


def _text(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "ds"
    _image(root / "3_cat" / "a.png", "PNG")
    _text(root / "3_cat" / "a.txt", "a cat\nsecond line, not trained")  # multi-line: first line trains
    _image(root / "3_cat" / "nested" / "deeper" / "b.webp", "WEBP")  # nested; only a .caption file
    _text(root / "3_cat" / "nested" / "deeper" / "b.caption", "b from the caption file")
    _image(root / "3_cat" / "C.JPG", "JPEG")  # upper-case extension
    _text(root / "3_cat" / "C.txt", "\ufeffcat with a BOM")
    _image(root / "loose.avif", "AVIF")  # loose image, both caption kinds
    _text(root / "loose.txt", "loose from txt")
    _text(root / "loose.caption", "loose from caption")
    _image(root / "misc" / "sub" / "d.Png", "PNG")  # mixed case, no caption, plain nested folder
    _image(root / "misc" / "2_dog" / "e.png", "PNG")  # nearest N_name folder counts
    _image(root / "0_skip" / "f.png", "PNG")  # 0 repeats: not trained
    _image(root / "_parked" / "g.png", "PNG")  # parked folder
    _image(root / ".hidden" / "h.png", "PNG")  # hidden folder
    _text(root / "orphan.txt", "a caption without an image")
    _image(root / "empty_caption.png", "PNG")
    _text(root / "empty_caption.txt", "   \n")
    _image(root / "bad_caption.png", "PNG")
    _text(root / "bad_caption.txt", "caf\xe9".encode("cp1252"))  # not UTF-8: both skip the image
    full = root / "truncated.png"
    _image(full, "PNG", size=(400, 400))
    full.write_bytes(full.read_bytes()[:300])  # cut off: both skip it
    Image.new("P", (300, 300)).save(root / "anim.gif", "GIF")  # a format training does not read
    if ".jxl" in IMAGE_EXTENSIONS:
        _image(root / "j.jxl", "JXL")
    else:
        _text(root / "j.jxl", b"\xff\x0a not decodable here")  # no JPEG XL codec: neither reads it
    return root


def _check_view(root: Path, ext: str) -> dict[str, tuple[str, int]]:
    check = check_dataset(root, caption_ext=ext, progress=False)
    return {str(f.path.relative_to(root)): (f.caption, f.repeats) for f in check.images if f.trained}


def _trainer_view(root: Path, ext: str) -> dict[str, tuple[str, int]]:
    items, _ = scan_dataset(root, caption_extension=ext)
    return {str(i.path.relative_to(root)): (i.caption, i.repeats) for i in items}


@pytest.mark.parametrize("ext", [".txt", ".caption"])
def test_check_and_trainer_agree_image_by_image(corpus, ext):
    assert _check_view(corpus, ext) == _trainer_view(corpus, ext)


def test_what_both_see(corpus):
    seen = _trainer_view(corpus, ".txt")
    assert seen == {
        "3_cat/a.png": ("a cat", 3),
        "3_cat/nested/deeper/b.webp": ("cat", 3),  # no .txt: the folder's class tokens
        "3_cat/C.JPG": ("cat with a BOM", 3),
        "loose.avif": ("loose from txt", 1),
        "misc/sub/d.Png": ("", 1),
        "misc/2_dog/e.png": ("dog", 2),
        "empty_caption.png": ("", 1),
    }
    assert _trainer_view(corpus, ".caption")["3_cat/nested/deeper/b.webp"] == ("b from the caption file", 3)
    assert _trainer_view(corpus, ".caption")["loose.avif"] == ("loose from caption", 1)


def test_reports_agree_on_problems(corpus):
    check = check_dataset(corpus, progress=False)
    _, trainer = scan_dataset(corpus)
    by_path = {str(f.path.relative_to(corpus)): f for f in check.files}
    skipped = dict(trainer.skipped)
    for name in ("truncated.png", "bad_caption.png"):  # the trainer skips them; the check rejects them
        assert name in skipped and not by_path[name].trained
    assert by_path["truncated.png"].status == "rejected" and by_path["bad_caption.txt"].status == "rejected"
    assert not by_path["anim.gif"].trained and by_path["anim.gif"].status == "fixable"
    assert "0_skip (0 repeats)" in trainer.ignored_folders and not by_path["0_skip/f.png"].trained
    assert not any(p.startswith(("_parked", ".hidden")) for p in by_path)
    missing = {str(f.path.relative_to(corpus)) for f in check.images if f.trained and f.caption_problem == "missing"}
    assert missing == set(trainer.missing_captions) == {"3_cat/nested/deeper/b.webp", "misc/sub/d.Png",
                                                       "misc/2_dog/e.png"}
    report = dataset_report(check, resolution=512)
    assert report["orphan_captions"] == ["orphan.txt"]
    assert report["multiline_captions"] == ["3_cat/a.png"] == trainer.multiline_captions
    assert report["samples_per_epoch"] == sum(r for _, r in _trainer_view(corpus, ".txt").values()) == 14
    assert any("more than one line" in w for w in report["warnings"])
