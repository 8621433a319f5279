"""The model cards (``weights/README.md``) state what the shipped weights files give.

Every figure table of a card follows the ``cloudmask`` command that produces it (``pipeline/detect/cards.py`` reads both).
The slow test reruns each command as a user would from a clean clone (in the repository root, no
``$CLOUDMASK_WEIGHTS``; ``cloudmask evaluate`` keeps no cache: labels and teachers are computed afresh) and
compares every figure with the card, within ``pipeline.detect.cards.TOLERANCE`` (0.05); it also checks that the command
measured the file the card is about (its sha256). The fast tests check that the cards name the shipped files by
their sha256, that no table of figures lacks its command, and that a figure off by 0.1 is caught.

Time on 2 CPU cores (fp32, in this process): the nine commands take about 2.7 min of CPU, 3 min 15 s to 5 min 20 s
of wall time beside another test run; each 8-33 s but bigearthnet's (30-55 s) and reBEN's (90-115 s):
ukis-csmask builds its ONNX session for every patch, twice with ``--teachers``.
"""

import json
import re
import shlex
import signal
from hashlib import sha256
from pathlib import Path

import pytest

from pipeline.detect import cards

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "weights" / "README.md"
CARDS = cards.read_cards(CARD)
COMMANDS = list(dict.fromkeys(t.command for card in CARDS for t in card.tables))


def test_the_cards_name_every_shipped_file_by_its_sha256():
    shipped = sorted(p.name for p in (ROOT / "weights").glob("*.safetensors"))
    assert sorted(card.file for card in CARDS) == shipped
    for card in CARDS:
        digest = sha256((ROOT / "weights" / card.file).read_bytes()).hexdigest()
        assert card.sha256 == digest, f"the card of {card.file} names sha256 {card.sha256}, the file is {digest}"
        assert card.tables, f"the card of {card.file} has no figure table"


def test_every_table_of_figures_follows_its_command():
    """A table row with a cell that is a figure of two decimals (as ``cloudmask evaluate`` prints them) lies in a
    table the reader parses, i.e. one that follows its command: no figure escapes the slow test."""
    parsed = {n for card in CARDS for t in card.tables for n in range(t.rows_at[0], t.rows_at[1] + 1)}
    figure = re.compile(r"^\**\s*\d[\d,]*\.\d\d\s*%?\s*\**$")
    loose = [
        f"line {n}: {line}"
        for n, line in enumerate(CARD.read_text().splitlines(), start=1)
        if line.lstrip().startswith("|")
        and n not in parsed
        and any(figure.match(cell.strip()) for cell in line.strip().strip("|").split("|"))
    ]
    assert not loose, "tables of figures without a command before them:\n" + "\n".join(loose)


def test_a_figure_off_by_a_tenth_is_caught():
    text = (
        "File `w.safetensors`, sha256 `" + "0" * 64 + "`\n\n"
        "Measured by `cloudmask evaluate --dataset starter --teachers`:\n\n"
        "| held-out | pixels | Clear | Thick | Cloud | mIoU | agreement (%) |\n|---|---|---|---|---|---|---|\n"
        "| teacher labels | 54,074 | 76.83 | 1.04 | | 35.51 | 63.41 |\n"
        "| s2cloudless | 65,536 | 80.80 | | 77.69 | | 88.49 |\n"
    )
    (card,) = cards.parse(text)
    (table,) = card.tables
    result = {
        "pixels": 54074,
        "iou": [76.83, 1.04, 44.47, 19.70],
        "miou": 35.51,
        "aacc": 63.41,
        "teachers": {
            "s2cloudless": {"classes": ["clear", "cloud"], "iou": [80.80, 77.69], "agreement": 88.49, "pixels": 65536}
        },
    }
    assert cards.mismatches(table, result) == []
    assert cards.mismatches(table, dict(result, iou=[76.83, 1.08, 0, 0])) == []  # within 0.05
    assert cards.mismatches(table, dict(result, iou=[76.83, 1.14, 0, 0])) == [
        "teacher labels / Thick: card 1.04, command 1.14"
    ]
    off = dict(result, teachers={"s2cloudless": dict(result["teachers"]["s2cloudless"], agreement=88.39)})
    assert cards.mismatches(table, off) == ["s2cloudless / agreement (%): card 88.49, command 88.39"]
    with pytest.raises(ValueError, match="line 7: 'n/a' is not a figure"):
        cards.parse(text.replace("| 1.04 |", "| n/a |"))


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.removeprefix("cloudmask evaluate ") for c in COMMANDS])
def test_the_cards_figures_are_what_their_commands_give(command, tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.delenv("CLOUDMASK_WEIGHTS", raising=False)  # the default weights are the shipped ones
    monkeypatch.chdir(ROOT)  # the commands name files as a clone holds them
    out = tmp_path / "figures.json"
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main([*shlex.split(command)[1:], "--json", str(out)])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    problems = []
    for card in CARDS:
        for table in card.tables:
            if table.command != command:
                continue
            if result["sha256"] != card.sha256:
                problems.append(
                    f"line {table.line}: the command measured {result['weights']} (sha256 "
                    f"{result['sha256'][:8]}…), not the card's {card.file} ({card.sha256[:8]}…)"
                )
            problems += [f"line {table.line} ({table.title}): {m}" for m in cards.mismatches(table, result)]
    assert not problems, f"{CARD} against `{command}`:\n" + "\n".join(problems)
