"""Fixtures of the module's tests: generated checkpoints (real layouts, small widths) and the
command line to check the module against.

The command line is ``$CKPT_DIFF_BIN`` when set (``.ci/run`` sets it to the binary cargo
built), else the ``ckpt-diff`` command the wheel installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def cli_path() -> str:
    exe = os.environ.get("CKPT_DIFF_BIN") or shutil.which("ckpt-diff")
    assert exe, "no ckpt-diff command: set CKPT_DIFF_BIN or install the wheel"
    return exe


def cli(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """Runs the command line; returns the finished process (stdout as text)."""
    p = subprocess.run(
        [cli_path(), *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    if check and p.returncode not in (0, 1):
        raise AssertionError(f"ckpt-diff {args} failed ({p.returncode}):\n{p.stderr}")
    return p


def cli_json(*args, cwd=None):
    """The documents ``ckpt-diff ARGS --json`` prints (one JSON document)."""
    return json.loads(cli(*args, "--json", cwd=cwd).stdout)


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
