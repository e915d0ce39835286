"""Fixtures of the module's tests: generated checkpoints (real layouts, small widths), and
ckpt-diff's cache in a folder of the tests' own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_oracle import cli


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """ckpt-diff's cache (hashes, merge rates) in a folder of the tests' own."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> Path:
    """An SD1 family at 1/16 width: base, ft1, ft2 and merges of them (family.json)."""
    d = tmp_path_factory.mktemp("sd1") / "fam"
    cli("synth", "family", d, "--arch", "sd1", "--scale", "16", "--seed", "42",
        "--finetunes", "2", "-q")
    return d


@pytest.fixture(scope="session")
def big_pair(tmp_path_factory) -> tuple:
    """Two SD1 checkpoints at 1/4 width (134 MB each): long enough to interrupt."""
    d = tmp_path_factory.mktemp("big")
    a, b = d / "a.safetensors", d / "b.safetensors"
    cli("synth", "model", a, "--arch", "sd1", "--scale", "4", "--seed", "1", "-q")
    cli("synth", "model", b, "--arch", "sd1", "--scale", "4", "--seed", "1",
        "--delta", "7:0.05", "-q")
    return a, b
