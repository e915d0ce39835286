"""The examples of docs/python.md run: the L2 map of a family, drawn with matplotlib."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_l2_map_draws_the_family(family, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "map.png"
    monkeypatch.setattr(sys, "argv", ["l2_map.py", str(family), str(out)])
    runpy.run_path(str(EXAMPLES / "l2_map.py"), run_name="__main__")
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
