"""Notebook widgets for captions: the caption editor grid and the tag frequency table with bulk actions.

Widgets only read their values and call helpers (``curation``, ``sidecar``); every callback runs under the
panel's ``Output`` so an error is shown, never lost. Every save is a backed-up change set with an Undo button.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

from PIL import Image, ImageOps

from helpers.captioning import curation, sidecar
from helpers.captioning.sidecar import ORIGINAL, CaptionRecord, RenderConfig
from helpers.captioning.tags import join_tags, split_tags
from helpers.dataset.caption_files import format_preview
from helpers.dataset.files import list_images


def thumbnail_png(image: Path, size: int = 192) -> bytes:
    """PNG bytes of a thumbnail (a grey tile when the file cannot be decoded)."""
    try:
        with Image.open(image) as im:
            im = ImageOps.exif_transpose(im)
            im.thumbnail((size, size))
            im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
            buf = io.BytesIO()
            im.save(buf, "PNG")
            return buf.getvalue()
    except Exception:  # unreadable: a placeholder keeps the grid aligned
        buf = io.BytesIO()
        Image.new("RGB", (size, size), (90, 30, 30)).save(buf, "PNG")
        return buf.getvalue()


def caption_key(record: CaptionRecord, source: str) -> str:
    """Which caption an editor box edits: the chosen source, else the latest, else a new "original"."""
    if source != "latest" and source in record.captions:
        return source
    return next(reversed(record.captions), ORIGINAL) if record.captions else ORIGINAL


def edited_record(record: CaptionRecord, key: str, caption_text: str, tag_text: str) -> CaptionRecord:
    """``record`` with the editor's caption and tag text applied (kept-tag count clipped to the new tags)."""
    new = record.copy()
    caption_text = caption_text.strip()
    if caption_text:
        new.captions[key] = caption_text
    else:
        new.captions.pop(key, None)
    new.tags = split_tags(tag_text)
    new.keep = min(new.keep, len(new.tags))
    return new


class _Panel:
    """Shared plumbing: an output area, a status line, and the last edit for Undo."""

    def __init__(self):
        import ipywidgets as w

        self.output = w.Output()
        self.status = w.HTML("")
        self.last_edit: sidecar.EditResult | None = None

    def guard(self, fn):
        with self.output:
            try:
                fn()
            except Exception as exc:  # shown in the panel: a widget callback must never fail silently
                self.status.value = f"<b style='color:#b00'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</b>"

    def save(self, records: dict[Path, CaptionRecord], render: RenderConfig) -> None:
        if not records:
            self.status.value = "nothing changed"
            return
        self.last_edit = sidecar.apply_edit(records, render)
        problems = "".join(f"<br>{html.escape(str(p.name))}: {html.escape(m)}"
                           for p, m in self.last_edit.problems.items())
        self.status.value = (f"saved {len(records)} image(s); backups: "
                             f"{html.escape(', '.join(str(d) for d in self.last_edit.backup_dirs))}{problems}")

    def undo(self) -> None:
        if self.last_edit is None:
            self.status.value = "nothing to undo in this panel (older edits: python -m helpers.captioning undo DIR)"
            return
        results = sidecar.undo_edit(self.last_edit)
        conflicts = [c for r in results for c in r.conflicts]
        self.last_edit = None
        self.status.value = "undone" + ("; kept (edited since): " + html.escape("; ".join(conflicts)) if conflicts else "")


class CaptionEditor(_Panel):
    """A page of thumbnails, each with its caption and tags in text boxes; Save writes the changed ones."""

    def __init__(self, folder: str | os.PathLike, render: RenderConfig | None = None, per_page: int = 12,
                 columns: int = 3, thumb: int = 192):
        import ipywidgets as w

        super().__init__()
        self.render = render or RenderConfig()
        self.images = list_images(folder)
        self.per_page, self.columns, self.thumb = per_page, columns, thumb
        self.page = 0
        self.cells: list[tuple[Path, str, CaptionRecord, object, object]] = []
        self.grid = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat({columns}, 1fr)", grid_gap="8px"))
        buttons = {name: w.Button(description=name) for name in ("◀ prev", "next ▶", "Save", "Undo")}
        buttons["◀ prev"].on_click(lambda _b: self.guard(lambda: self.show_page(self.page - 1)))
        buttons["next ▶"].on_click(lambda _b: self.guard(lambda: self.show_page(self.page + 1)))
        buttons["Save"].on_click(lambda _b: self.guard(self.save_page))
        buttons["Undo"].on_click(lambda _b: self.guard(lambda: (self.undo(), self.show_page(self.page))))
        self.page_label = w.HTML("")
        self.widget = w.VBox([w.HBox(list(buttons.values()) + [self.page_label]), self.grid, self.status,
                              self.output])
        self.show_page(0)

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.images) // self.per_page))

    def show_page(self, page: int) -> None:
        import ipywidgets as w

        self.page = min(max(page, 0), self.pages - 1)
        chunk = self.images[self.page * self.per_page:(self.page + 1) * self.per_page]
        records, problems = sidecar.load_records(chunk)
        self.cells, boxes = [], []
        for image in chunk:
            if image in problems:
                boxes.append(w.VBox([w.Image(value=thumbnail_png(image, self.thumb), format="png"),
                                     w.HTML(f"<b style='color:#b00'>{html.escape(problems[image])}</b>")]))
                continue
            record = records[image]
            key = caption_key(record, self.render.caption_source)
            caption = w.Textarea(value=record.captions.get(key, ""), placeholder=f"caption ({key})",
                                 layout=w.Layout(width="100%", height="70px"))
            tags = w.Textarea(value=join_tags(record.tags), placeholder="tags, comma separated",
                              layout=w.Layout(width="100%", height="50px"))
            self.cells.append((image, key, record, caption, tags))
            boxes.append(w.VBox([w.Image(value=thumbnail_png(image, self.thumb), format="png"),
                                 w.HTML(f"<small>{html.escape(image.name)}</small>"), caption, tags]))
        self.grid.children = boxes
        self.page_label.value = f"page {self.page + 1} / {self.pages} ({len(self.images)} images)"

    def changed_records(self) -> dict[Path, CaptionRecord]:
        out = {}
        for image, key, record, caption, tags in self.cells:
            new = edited_record(record, key, caption.value, tags.value)
            if new.captions != record.captions or new.tags != record.tags:
                out[image] = new
        return out

    def save_page(self) -> None:
        self.save(self.changed_records(), self.render)
        self.show_page(self.page)


class TagTable(_Panel):
    """The dataset's tags by frequency (chart + ticked list); remove or replace the ticked tags everywhere."""

    def __init__(self, folder: str | os.PathLike, render: RenderConfig | None = None, top: int = 60):
        import ipywidgets as w

        super().__init__()
        self.folder, self.render, self.top = Path(folder), render or RenderConfig(), top
        self.chart = w.Image(format="png")
        self.rows = w.VBox(layout=w.Layout(max_height="360px", overflow_y="auto"))
        self.replacement = w.Text(placeholder="replace ticked tags with (empty: remove)")
        remove_btn, replace_btn = w.Button(description="Remove ticked"), w.Button(description="Replace ticked")
        preview_btn, undo_btn = w.Button(description="Preview"), w.Button(description="Undo")
        remove_btn.on_click(lambda _b: self.guard(lambda: self.apply("remove")))
        replace_btn.on_click(lambda _b: self.guard(lambda: self.apply("replace")))
        preview_btn.on_click(lambda _b: self.guard(self.preview))
        undo_btn.on_click(lambda _b: self.guard(lambda: (self.undo(), self.refresh())))
        self.widget = w.VBox([self.chart, self.rows, w.HBox([self.replacement, preview_btn, remove_btn,
                                                              replace_btn, undo_btn]), self.status, self.output])
        self.refresh()

    def load(self):
        return sidecar.load_records(list_images(self.folder))

    def refresh(self) -> None:
        import ipywidgets as w

        records, _ = self.load()
        freqs = curation.tag_frequencies(records)
        if freqs:
            buf = io.BytesIO()
            curation.frequency_chart(freqs, top=min(30, self.top)).save(buf, "PNG")
            self.chart.value = buf.getvalue()
        self.boxes = [w.Checkbox(value=False, description=f"{tag}  ({n})", indent=False,
                                 layout=w.Layout(width="auto")) for tag, n in freqs[:self.top]]
        self.tags = [tag for tag, _ in freqs[:self.top]]
        self.rows.children = self.boxes or [w.HTML("no tags yet: run the tagger or booru captions first")]

    def ticked(self) -> list[str]:
        return [tag for tag, box in zip(self.tags, self.boxes, strict=True) if box.value]

    def planned(self, action: str) -> dict[Path, CaptionRecord]:
        records, _ = self.load()
        ticked = self.ticked()
        if not ticked:
            raise ValueError("tick at least one tag first")
        if action == "replace" and self.replacement.value.strip():
            return curation.replace_tags_everywhere(records, ticked, self.replacement.value.strip())
        return curation.remove_tags_everywhere(records, ticked)

    def preview(self) -> None:
        action = "replace" if self.replacement.value.strip() else "remove"
        rows = sidecar.preview_edit(self.planned(action), self.render)
        self.output.clear_output()
        print(format_preview(rows, limit=20))

    def apply(self, action: str) -> None:
        self.save(self.planned(action), self.render)
        self.refresh()


def caption_editor(folder: str | os.PathLike, render: RenderConfig | None = None, per_page: int = 12):
    """The caption editor grid widget for ``folder`` (show it as a cell's last expression)."""
    return CaptionEditor(folder, render, per_page).widget


def tag_table(folder: str | os.PathLike, render: RenderConfig | None = None, top: int = 60):
    """The tag frequency table widget with bulk remove / replace for ``folder``."""
    return TagTable(folder, render, top).widget
