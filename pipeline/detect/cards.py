"""The model cards (``weights/README.md``), read by machine: which file each card is about, and its figure tables.

A card starts with the line ``File `NAME`, sha256 `HEX``` (the whole sha256); every figure table in it follows a
line that ends in ``measured by `COMMAND`:`` (or ``by `COMMAND`:``), the ``cloudmask`` command that produces every
figure of the table (with ``--json FILE`` added, its JSON holds them: ``cloudmask evaluate``'s). Both are plain
text, so the reader of the card sees the file and each table's command. A table's first header cell is its title;
its first column names the row:

- ``teacher labels``: scores against the labelling rule's four-class labels (the JSON's top level);
- a teacher's name (``s2cloudless``, ``ukis-csmask``): agreement with that teacher in its own classes (the JSON's
  ``teachers``).

The other header cells name the figure in each column: a class (``Clear``, ``Thick``, ``Thin``, ``Shadow``, or a
teacher's ``Cloud``) for its IoU, ``mIoU``, ``mF1``, ``aAcc``, ``agreement`` (the labels' row: aAcc, the share of
labelled pixels in the same class) or ``pixels``; a bracketed unit is left out (``agreement (%)``). An empty cell
holds no figure. ``tests/test_model_cards.py`` reruns every command and compares every figure;
``cloudmask weights info`` shows the figures of the card whose sha256 is the file's.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

CARD = re.compile(r"^File `(?P<file>[^`]+)`, sha256 `(?P<sha>[0-9a-f]{64})`")
FIGURES = re.compile(r"\bby\s+`(?P<command>cloudmask [^`]+)`:\s*$")  # a line (joined with the one before) ending so
LABEL_CLASSES = ("clear", "thick", "thin", "shadow")  # cloudmask evaluate's classes, in the order of its "iou"
LABELS_ROW = "teacher labels"
TOLERANCE = 0.05  # a figure and its command's output may differ by this much (the last digit's rounding, CPUs)


@dataclass(frozen=True)
class FigureTable:
    """One table of figures and the command that produces them."""

    command: str
    title: str
    columns: tuple[str, ...]  # header cells after the first (figure names)
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]  # (row name, one value or None per column)
    line: int  # 1-based line of the table's command in the card
    rows_at: tuple[int, int] = (0, 0)  # 1-based first and last line of the table itself

    @property
    def argv(self) -> list[str]:
        """The command's arguments after ``cloudmask``."""
        words = shlex.split(self.command)
        return words[1:]

    def figures(self):
        """``(row, column, value)`` of every figure in the table."""
        for row, values in self.rows:
            for column, value in zip(self.columns, values):
                if value is not None:
                    yield row, column, value


@dataclass(frozen=True)
class Card:
    """The card of one weights file: its name, sha256 and figure tables."""

    file: str
    sha256: str
    tables: tuple[FigureTable, ...]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _value(cell: str) -> float | None:
    text = cell.replace("*", "").replace(",", "").replace("%", "").strip()
    if text in ("", "–", "-", "—"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{cell!r} is not a figure") from None


def name(cell: str) -> str:
    """A header or row cell as a key: lower case, without emphasis and without a bracketed unit."""
    return re.sub(r"\s*\(.*\)\s*$", "", cell.replace("*", "")).strip().lower()


def parse(text: str) -> list[Card]:
    """Every card in ``text`` (a model card file) with its figure tables. Raises ``ValueError`` naming the line
    where a command line is not followed by a table, a table row has the wrong number of cells, a cell is
    not a figure, or a table comes before any card."""
    lines = text.splitlines()
    cards: list[tuple[str, str, list[FigureTable]]] = []
    i = 0
    while i < len(lines):
        m = CARD.search(lines[i])
        if m:
            cards.append((m["file"], m["sha"], []))
        m = FIGURES.search(f"{lines[i - 1] if i else ''} {lines[i]}") if lines[i].rstrip().endswith("`:") else None
        if m:
            if not cards:
                raise ValueError(f"line {i + 1}: a figures table before any card's 'File `NAME`, sha256 `HEX`' line")
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            table = []
            while start + len(table) < len(lines) and lines[start + len(table)].lstrip().startswith("|"):
                table.append(lines[start + len(table)])
            if len(table) < 3:
                raise ValueError(f"line {i + 1}: '{m['command']}' is not followed by a table with a header and rows")
            header = _cells(table[0])
            rows = []
            for k, row_line in enumerate(table[2:], start=start + 3):
                cells = _cells(row_line)
                if len(cells) != len(header):
                    raise ValueError(f"line {k}: {len(cells)} cells where the header has {len(header)}")
                try:
                    rows.append((name(cells[0]), tuple(_value(c) for c in cells[1:])))
                except ValueError as exc:
                    raise ValueError(f"line {k}: {exc}") from None
            cards[-1][2].append(
                FigureTable(
                    command=m["command"],
                    title=header[0].replace("*", "").strip(),
                    columns=tuple(header[1:]),
                    rows=tuple(rows),
                    line=i + 1,
                    rows_at=(start + 1, start + len(table)),
                )
            )
            i = start + len(table)
            continue
        i += 1
    return [Card(file, sha, tuple(tables)) for file, sha, tables in cards]


def card_path() -> Path:
    """The shipped model cards (beside the shipped weights, in a clone or an installed package)."""
    from pipeline.shipped import shipped_dir

    return shipped_dir("weights") / "README.md"


def read_cards(path: str | Path | None = None) -> list[Card]:
    return parse(Path(path or card_path()).read_text(encoding="utf-8"))


def card_for(sha256: str, path: str | Path | None = None) -> Card | None:
    """The card of the weights file with this sha256, or None (no card, or no card file)."""
    try:
        cards = read_cards(path)
    except FileNotFoundError:
        return None
    return next((c for c in cards if c.sha256 == sha256), None)


def lookup(result: dict, row: str, column: str) -> float:
    """The figure of ``row`` and ``column`` (as written in a card) in the JSON of ``cloudmask evaluate``."""
    key = name(column)
    if row == LABELS_ROW:
        scores, classes = result, LABEL_CLASSES
        key = "aacc" if key == "agreement" else key
    else:
        teachers = result.get("teachers") or {}
        if row not in teachers:
            raise KeyError(
                f"row {row!r}: the command's output has no such teacher (has: {', '.join(teachers) or 'none'})"
            )
        scores, classes = teachers[row], tuple(c.lower() for c in teachers[row]["classes"])
    if key in classes:
        return float(scores["iou"][classes.index(key)])
    if key in ("miou", "mf1", "aacc", "agreement", "pixels") and key in scores:
        return float(scores[key])
    raise KeyError(f"row {row!r}, column {column!r}: no such figure in the command's output")


def mismatches(table: FigureTable, result: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Every figure of ``table`` that ``result`` (its command's JSON) does not give within ``tolerance``."""
    out = []
    for row, column, value in table.figures():
        got = lookup(result, row, column)
        if not abs(got - value) <= tolerance:
            out.append(f"{row} / {column}: card {value:g}, command {got:g}")
    return out
