"""Tag implications (``big breasts`` implies ``breasts``) read from a Danbooru/e621-style CSV, for dropout.

A caption that says both a tag and a tag it implies teaches the model that the two always come together;
dropping the implied tag part of the time (hyperfusion's ``--tag_implication_dropout``) loosens that tie.
This module reads the implications file and answers "which tags do these tags imply" (transitively).

File format: one implication per row, ``antecedent,consequent``. A header row naming the columns
(``antecedent_name``/``consequent_name`` as in the Danbooru and e621 ``tag_implications`` exports, or
``antecedent``/``consequent``) may come first; then a ``status`` column, when present, keeps only
``active`` rows (the exports also list deleted and pending ones). Tag names are compared by
``captioning.tags.tag_key``, so ``big_breasts`` in the file matches ``big breasts`` in a caption.
A cycle (a implies b implies a) is an error that names its tags: no tag may imply itself.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from pathlib import Path

from helpers.captioning.tags import tag_key

ANTECEDENT_COLUMNS = ("antecedent_name", "antecedent")
CONSEQUENT_COLUMNS = ("consequent_name", "consequent")


class ImplicationError(ValueError):
    """The implications file cannot be used; the message names the file, the line or tags, and the fix."""


class TagImplications:
    """Every tag's implied tags, closed under implication (a -> b -> c gives a: {b, c}); keys are ``tag_key``s."""

    def __init__(self, pairs: list[tuple[str, str]], where: str = "implications"):
        graph: dict[str, set[str]] = {}
        for antecedent, consequent in pairs:
            graph.setdefault(tag_key(antecedent), set()).add(tag_key(consequent))
        check_no_cycle(graph, where)
        self.implied: dict[str, frozenset[str]] = {}
        for tag in graph:
            self._close(tag, graph)

    def _close(self, tag: str, graph: dict[str, set[str]]) -> frozenset[str]:
        if tag not in self.implied:
            out: set[str] = set()
            for child in graph.get(tag, ()):
                out.add(child)
                out |= self._close(child, graph)
            self.implied[tag] = frozenset(out)
        return self.implied[tag]

    def __len__(self) -> int:
        return len(self.implied)

    def implied_by(self, keys: list[str]) -> set[str]:
        """``tag_key``s of every tag that one of the tags with these ``tag_key``s implies."""
        out: set[str] = set()
        for key in keys:
            out |= self.implied.get(key, frozenset())
        return out


def check_no_cycle(graph: dict[str, set[str]], where: str) -> None:
    """``ImplicationError`` naming the tags of the first cycle found (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph.get(root, ())))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                raise ImplicationError(f"{where}: the implications form a cycle: {' -> '.join(cycle)}; a tag cannot "
                                       "imply itself: remove one of these rows")
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))


def parse_implications(text: str, where: str) -> list[tuple[str, str]]:
    """(antecedent, consequent) pairs from CSV text (see the module docstring for the format)."""
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise ImplicationError(f"{where}: no implications in the file: give rows of antecedent,consequent")
    columns, status = (0, 1), None
    header = [cell.strip().lower() for cell in rows[0][1]]
    if any(name in header for name in ANTECEDENT_COLUMNS + CONSEQUENT_COLUMNS):
        try:
            columns = (next(header.index(n) for n in ANTECEDENT_COLUMNS if n in header),
                       next(header.index(n) for n in CONSEQUENT_COLUMNS if n in header))
        except StopIteration:
            raise ImplicationError(f"{where}: the header names only one of antecedent/consequent: it needs "
                                   "both columns") from None
        status = header.index("status") if "status" in header else None
        rows = rows[1:]
    pairs = []
    for line, row in rows:
        if len(row) <= max(columns):
            raise ImplicationError(f"{where}, line {line}: expected antecedent,consequent, got {','.join(row)!r}")
        if status is not None and len(row) > status and row[status].strip().lower() not in ("active", ""):
            continue
        antecedent, consequent = row[columns[0]].strip(), row[columns[1]].strip()
        if not antecedent or not consequent:
            raise ImplicationError(f"{where}, line {line}: an empty tag name: fill it in or delete the row")
        pairs.append((antecedent, consequent))
    return pairs


def load_implications(path: str | os.PathLike) -> TagImplications:
    """The implications in ``path`` (cached by path, size and modification time: forms validate often)."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImplicationError(f"implications file not found: {path}: give a CSV of antecedent,consequent rows") from None
    return _load(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> TagImplications:
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImplicationError(f"{path}: not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from None
    return TagImplications(parse_implications(text, path), path)
