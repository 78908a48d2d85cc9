"""Curation: trigger words, bulk tag edits, frequency table, sidecar rendering, editor widgets; all undoable."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from helpers.captioning import curation as C
from helpers.captioning import sidecar as S
from helpers.captioning.editor import CaptionEditor, TagTable
from helpers.dataset.caption_files import CaptionError, caption_path, read_caption


def rec(tags=(), caption=None, keep=0):
    r = S.CaptionRecord(tags=list(tags), keep=keep)
    if caption:
        r.set_caption("original", caption)
    return r


@pytest.mark.parametrize("position, text, expected", [
    ("front", "a woman with purple hair", "kncr, a woman with purple hair"),
    ("before_class", "a woman wearing futuristic outfit", "a woman wearing futuristic kncr outfit"),
    ("replace_class", "a woman wearing an outfit", "a kncr wearing an outfit"),
    ("before_class", "a man in a hat", "kncr, a man in a hat"),        # no class word: front
    ("before_class", "kncr outfit on a woman", "kncr outfit on a woman"),  # already there: unchanged
    ("before_class", "an Outfit, outfits", "an kncr Outfit, outfits"),    # whole word, first one only
])
def test_trigger_in_captions(position, text, expected):
    word = "woman" if position == "replace_class" else "outfit"
    assert C.insert_trigger_in_caption(text, "kncr", position, word) == expected


def test_trigger_in_tags_keeps_it_fixed():
    assert C.insert_trigger_in_tags(["1girl", "solo"], 0, "ewpp") == (["ewpp", "1girl", "solo"], 1)
    assert C.insert_trigger_in_tags(["1girl", "miku", "smile"], 2, "ewpp", "before_class", "miku") == (
        ["1girl", "ewpp", "miku", "smile"], 3)
    assert C.insert_trigger_in_tags(["1girl", "woman"], 0, "femme ewpp", "replace_class", "woman") == (
        ["1girl", "femme ewpp"], 0)
    assert C.insert_trigger_in_tags(["ewpp", "x"], 1, "ewpp") == (["ewpp", "x"], 1)


def test_curate_records_order_of_operations_and_only_changed_returned():
    records = {Path("a.png"): rec(["long_hair", "Long Hair", "text", "smile", "grin"], "a woman smiling"),
               Path("b.png"): rec(["smile"], None),
               Path("c.png"): rec([], None)}
    cfg = C.CurationConfig(trigger="ewpp", replace=["grin -> smile"], remove=["text"], sort="alphabetical")
    out = C.curate_records(records, cfg)
    assert out[Path("a.png")].tags == ["ewpp", "long_hair", "smile"] and out[Path("a.png")].keep == 1
    assert out[Path("a.png")].captions["original"] == "ewpp, a woman smiling"
    assert out[Path("b.png")].tags == ["ewpp", "smile"]
    assert out[Path("c.png")].tags == ["ewpp"]  # nothing yet: gets the trigger
    assert records[Path("a.png")].tags[0] == "long_hair"  # inputs untouched
    assert C.curate_records(out, cfg) == {}  # idempotent: nothing changes the second time
    with pytest.raises(ValueError, match="old tag -> new tag"):
        C.curate_records(records, C.CurationConfig(replace=["grin smile"]))


def test_tag_frequencies_count_images_not_mentions():
    records = {Path("a"): rec(["smile", "Smile", "solo"]), Path("b"): rec(["smile"]), Path("c"): rec(["x"])}
    assert C.tag_frequencies(records) == [("smile", 2), ("solo", 1), ("x", 1)]
    sorted_out = C.curate_records({Path("d"): rec(["x", "solo", "smile"])} | records,
                                  C.CurationConfig(sort="frequency", dedupe=False))
    assert sorted_out[Path("d")].tags == ["smile", "solo", "x"]


def test_render_formats_and_record_roundtrip():
    r = rec(["1girl", "miku", "smile"], "A girl.", keep=2)
    r.set_caption("florence-2-large", "The image shows a girl.")
    assert S.render_caption(r, "tags") == "1girl, miku, smile"
    assert S.render_caption(r, "caption") == "The image shows a girl."
    assert S.render_caption(r, "caption", caption_source="original") == "A girl."
    assert S.render_caption(r, "caption, tags") == "The image shows a girl., 1girl, miku, smile"
    assert S.render_caption(r, "tags, caption", keep_separator=True) == "1girl, miku ||| smile, The image shows a girl."
    assert S.render_caption(rec(["a"]), "caption") == "a"  # missing kind: what exists is used
    both = rec(["sks", "1girl", "smile"], "a sks woman smiling", keep=1)  # trigger added to both kinds
    assert S.render_caption(both, "caption, tags", keep_separator=True) == "a sks woman smiling, 1girl, smile"
    assert S.render_caption(both, "tags") == "sks, 1girl, smile"
    back = S.parse_record(r.to_json(), "x")
    assert back.tags == r.tags and back.captions == r.captions and back.keep == 2
    with pytest.raises(CaptionError, match="x: field 'tags' should be list"):
        S.parse_record('{"tags": "a, b"}', "x")
    with pytest.raises(CaptionError, match="not valid JSON"):
        S.parse_record("{", "x")
    with pytest.raises(CaptionError, match="newer than this tunebook"):
        S.parse_record('{"format_version": 99}', "x")


def test_txt_import_tags_vs_prose():
    assert S.record_from_text("1girl, solo, long hair, smile").tags == ["1girl", "solo", "long hair", "smile"]
    kept = S.record_from_text("1girl, miku ||| smile, solo")
    assert kept.tags == ["1girl", "miku", "smile", "solo"] and kept.keep == 2
    prose = S.record_from_text("a red circle on blue")
    assert prose.tags == [] and prose.captions == {"original": "a red circle on blue"}
    assert S.record_from_text("A cat sits on a mat, looking at the camera with curious eyes.").tags == []


def _images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(p)
        out.append(p)
    return out


def test_apply_edit_preview_undo_and_hand_edited_txt_is_protected(tmp_path):
    images = _images(tmp_path / "ds")
    caption_path(images[0]).write_text("a photo of a dog", encoding="utf-8")
    records, problems = S.load_records(images)
    assert not problems
    new = C.curate_records(records, C.CurationConfig(trigger="sks", trigger_position="before_class",
                                                     class_word="dog"))
    rows = S.preview_edit(new, S.RenderConfig())
    assert [(r.action, r.new) for r in rows][0] == ("overwrite", "a photo of a sks dog")
    assert read_caption(images[0]) == "a photo of a dog"  # preview wrote nothing
    edit = S.apply_edit(new, S.RenderConfig())
    assert read_caption(images[0]) == "a photo of a sks dog" and read_caption(images[1]) == "sks"
    # the user edits a .txt by hand: the next render leaves it alone unless asked
    caption_path(images[0]).write_text("my own words", encoding="utf-8")
    again = C.curate_records(S.load_records(images)[0], C.CurationConfig(trigger="zzz"))
    result = S.apply_edit(again, S.RenderConfig())
    assert read_caption(images[0]) == "my own words" and "edited by hand" in result.problems[images[0]]
    S.undo_edit(result)
    undo = S.undo_edit(edit)
    assert any("edited after" in c for u in undo for c in u.conflicts)  # undo never clobbers the hand edit
    assert read_caption(images[0]) == "my own words" and not caption_path(images[1]).exists()
    forced = S.apply_edit(again, S.RenderConfig(overwrite_edited=True))
    assert not forced.problems


def test_non_utf8_caption_is_reported_not_overwritten(tmp_path):
    images = _images(tmp_path / "ds", 2)
    caption_path(images[0]).write_bytes(b"caf\xe9")
    records, problems = S.load_records(images)
    assert list(problems) == [images[0]] and "not UTF-8" in problems[images[0]]
    edit = S.apply_edit(C.curate_records(records, C.CurationConfig(trigger="sks")), S.RenderConfig())
    assert caption_path(images[0]).read_bytes() == b"caf\xe9"
    assert read_caption(images[1]) == "sks" and edit.texts.changed == 1


def test_caption_editor_and_tag_table_widgets_save_and_undo(tmp_path):
    images = _images(tmp_path / "ds", 4)
    (tmp_path / "ds" / "broken.png").write_bytes(b"nope")
    caption_path(images[0]).write_text("1girl, smile, text", encoding="utf-8")
    caption_path(images[1]).write_text("a red square", encoding="utf-8")
    editor = CaptionEditor(tmp_path / "ds", S.RenderConfig(format="caption, tags"), per_page=3)
    assert editor.pages == 2 and len(editor.grid.children) == 3
    cells = {cell[0]: cell for cell in editor.cells}
    assert set(cells) == {tmp_path / "ds" / "broken.png", images[0], images[1]}
    _, key, _, caption_box, tag_box = cells[images[1]]
    assert key == "original" and caption_box.value == "a red square"
    caption_box.value = "a deep red square"
    tag_box.value = "red theme, solid"
    editor.save_page()
    assert read_caption(images[1]) == "a deep red square, red theme, solid"
    assert "saved 1 image" in editor.status.value
    editor.undo()
    assert read_caption(images[1]) == "a red square"
    editor.show_page(1)
    assert len(editor.grid.children) == 2 and editor.page_label.value.startswith("page 2 / 2")

    table = TagTable(tmp_path / "ds", S.RenderConfig(format="tags"))
    assert table.tags == ["1girl", "smile", "text"] and table.chart.value  # equal counts: alphabetical
    table.boxes[table.tags.index("text")].value = True
    table.guard(table.preview)
    table.apply("remove")
    assert read_caption(images[0]) == "1girl, smile" and "text" not in table.tags
    table.boxes[table.tags.index("smile")].value = True
    table.replacement.value = "grin, happy"
    table.apply("replace")
    assert read_caption(images[0]) == "1girl, grin, happy"
    table.undo()
    assert read_caption(images[0]) == "1girl, smile"
    table.guard(lambda: table.apply("remove"))  # nothing ticked: an error shown in the panel, not raised
    assert "tick at least one tag" in table.status.value


def test_edit_writer_saves_in_chunks_and_undoes_them_all(tmp_path):
    images = _images(tmp_path / "ds", 5)
    writer = S.EditWriter(S.RenderConfig(), every=2)
    for image in images:
        writer.add(image, rec(["sks"], "a photo"))
        if image == images[1]:
            assert read_caption(images[0]) == "a photo, sks"  # the first chunk is on disk already
    writer.flush()
    assert writer.count == 5 and len(writer.edits) == 3 and len(writer.backup_dirs) == 6
    S.undo_edit(writer)
    assert not any(caption_path(p).exists() or caption_path(p, S.SIDECAR_EXT).exists() for p in images)
