"""Caption files: reading, the change-set writer (backup, no silent overwrite, undo), filenames <-> captions."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers.captioning import filenames as captions
from helpers.captioning.filenames import caption_from_filename, filename_from_caption
from helpers.changes import undo_changes
from helpers.dataset.caption_files import CaptionError, caption_path, preview_changes, read_caption, write_captions
from helpers.dataset.demo import make_demo_dataset
from helpers.dataset.files import list_images


def _image(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (1, 2, 3)).save(path)
    return path


def test_caption_path_and_read(tmp_path):
    img = _image(tmp_path / "a.b.png")
    assert caption_path(img) == tmp_path / "a.b.txt"
    assert caption_path(img, "caption") == tmp_path / "a.b.caption"
    assert read_caption(img) is None
    (tmp_path / "a.b.txt").write_bytes("\ufeffred fox, snow\n".encode())
    assert read_caption(img) == "red fox, snow"  # BOM and newline dropped


def test_read_caption_not_utf8_names_file(tmp_path):
    img = _image(tmp_path / "x.png")
    (tmp_path / "x.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CaptionError, match=r"x\.txt.*not UTF-8"):
        read_caption(img)


@pytest.mark.parametrize("name, expected", [
    ("a red circle on blue_01.png", "a red circle on blue"),
    ("a red circle on blue (2).jpg", "a red circle on blue"),
    ("a red circle on blue-3.webp", "a red circle on blue"),
    ("a red circle on blue copy.png", "a red circle on blue"),
    ("a red circle on blue - Copy (2).png", "a red circle on blue"),
    ("a red circle on blue_01 (2) copy.png", "a red circle on blue"),
    ("xxcc_outfit, standing, Helmet!.png", "xxcc outfit, standing, Helmet!"),
    ("woman age 30.png", "woman age 30"),
    ("1girl.png", "1girl"),
    ("0001.png", "0001"),
    ("café.png", "café"),
])
def test_caption_from_filename(name, expected):
    assert caption_from_filename(name) == expected


def test_caption_from_filename_options():
    assert caption_from_filename("my_cat_01.png", underscores_to_spaces=False) == "my_cat"
    assert caption_from_filename("my_cat_01.png", strip_suffixes=False) == "my cat 01"


def test_write_captions_never_overwrites_silently_and_undo(tmp_path):
    a, b = _image(tmp_path / "a.png"), _image(tmp_path / "sub" / "b.png")
    (tmp_path / "a.txt").write_text("hand written", encoding="utf-8")
    new = {a: "from filename a", b: "from filename b"}

    rows = preview_changes(new)
    assert [(r.image.name, r.old, r.action) for r in rows] == [
        ("a.png", "hand written", "skip (exists)"), ("b.png", None, "create")]
    image, old, text, action = rows[1]  # rows unpack as (image, old, new, action)
    assert (image, text, action) == (b, "from filename b", "create")

    cs = write_captions(new)
    assert cs.created == [tmp_path / "sub" / "b.txt"] and cs.skipped == [tmp_path / "a.txt"]
    assert read_caption(a) == "hand written"

    cs2 = write_captions(new, overwrite=True)
    assert cs2.replaced == [tmp_path / "a.txt"] and cs2.unchanged == [tmp_path / "sub" / "b.txt"]
    assert read_caption(a) == "from filename a"
    manifest = json.loads((cs2.backup_dir / "changes.json").read_text())
    assert manifest["entries"][0]["action"] == "replaced"
    assert (cs2.backup_dir / manifest["entries"][0]["backup"]).read_text() == "hand written"
    assert cs2.backup_dir.parent.name == ".tunebook_backups"
    assert list_images(tmp_path) == [a, b]  # backups are hidden from image listings

    res = undo_changes(cs2.backup_dir)
    assert res.restored == [tmp_path / "a.txt"] and read_caption(a) == "hand written"
    res = undo_changes(cs)
    assert res.removed == [tmp_path / "sub" / "b.txt"] and read_caption(b) is None
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_undo_keeps_later_edits(tmp_path):
    a = _image(tmp_path / "a.png")
    cs = write_captions({a: "first"})
    (tmp_path / "a.txt").write_text("edited by hand", encoding="utf-8")
    res = undo_changes(cs)
    assert res.conflicts and read_caption(a) == "edited by hand"
    res = undo_changes(cs, force=True)
    assert read_caption(a) is None
    assert (cs.backup_dir / "undone" / "a.txt").read_text() == "edited by hand"


def test_write_captions_refuses_when_existing_caption_unreadable(tmp_path):
    a = _image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CaptionError, match="a.txt"):
        write_captions({a: "new"}, overwrite=True)
    assert (tmp_path / "a.txt").read_bytes() == b"\xff\xfe\x00bad"


def test_filename_from_caption_is_legal_everywhere():
    assert filename_from_caption('a: b/c? "d" <e>|*', ".png") == "a_ b_c_ _d_ _e___.png"
    assert filename_from_caption("line one\nline two. ", ".png") == "line one line two.png"
    assert filename_from_caption("con", ".jpg") == "_con.jpg"
    assert filename_from_caption("   ", ".jpg") == "untitled.jpg"
    long = filename_from_caption("é" * 300, ".webp")
    assert len(long.encode()) <= 255 - 4 and long.endswith(".webp")
    long.encode().decode()  # cut on a character boundary


def test_rename_to_captions_and_back(tmp_path):
    a, b = _image(tmp_path / "IMG_001.png"), _image(tmp_path / "IMG_002.png")
    c = _image(tmp_path / "same caption.png")
    write_captions({a: "same caption", b: "same caption", c: "same caption"})
    (tmp_path / "IMG_001.png.json").write_text("{}", encoding="utf-8")
    res = captions.rename_images_to_captions({a: "same caption", b: "same caption", c: "same caption"})
    names = sorted(p.name for p in list_images(tmp_path))
    assert names == ["same caption.png", "same caption_01.png", "same caption_02.png"]
    assert all(read_caption(p) == "same caption" for p in list_images(tmp_path))  # captions moved along
    assert len(res.renamed) == 2
    assert (tmp_path / "same caption_01.png.json").exists()  # gallery-dl metadata moved with its image
    undo = undo_changes(res.backup_dir)
    assert len(undo.renamed_back) == 5  # two images, their captions, one metadata file
    assert (tmp_path / "IMG_001.png.json").exists()
    assert sorted(p.name for p in list_images(tmp_path)) == ["IMG_001.png", "IMG_002.png", "same caption.png"]


def test_rename_clashes_are_per_folder_and_long_captions_noted(tmp_path):
    a, b = _image(tmp_path / "10_x" / "one.png"), _image(tmp_path / "5_y" / "two.png")
    long_img = _image(tmp_path / "10_x" / "three.png")
    caps = {a: "same", b: "same", long_img: "tag, " * 80}
    res = captions.rename_images_to_captions(caps, dry_run=True)
    targets = {src.name: dst for src, dst in res.renamed}
    assert targets["one.png"] == tmp_path / "10_x" / "same.png" and targets["two.png"] == tmp_path / "5_y" / "same.png"
    assert len(targets["three.png"].name.encode()) <= 255 and res.notes and "too long" in res.notes[0]
    assert captions.caption_fits_filename("short", ".png") and not captions.caption_fits_filename("x" * 300, ".png")


def test_cli_from_filenames_and_to_filenames(tmp_path, capsys):
    make_demo_dataset(tmp_path / "d", n=6)
    (tmp_path / "d" / "a red circle on white_01.txt").write_text("mine", encoding="utf-8")
    assert captions.main(["from-filenames", str(tmp_path / "d"), "--dry-run"]) == 0
    assert "skip (exists)" in capsys.readouterr().out
    assert not any(p.suffix == ".txt" and "mine" not in p.read_text() for p in (tmp_path / "d").iterdir())
    assert captions.main(["from-filenames", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert '"created": 5' in out
    assert read_caption(tmp_path / "d" / "a red circle on white_01.png") == "mine"
    assert captions.main(["to-filenames", str(tmp_path / "d"), "--dry-run"]) == 0
    assert "->" in capsys.readouterr().out


def test_cli_bad_folder_exits_nonzero(tmp_path):
    with pytest.raises(SystemExit) as exc:
        captions.main(["from-filenames", str(tmp_path / "missing")])
    assert exc.value.code != 0
