"""The command line the module's tests check it against.

It is ``$CKPT_DIFF_BIN`` when set (``.ci/run`` sets it to the binary cargo
built), else the ``ckpt-diff`` command the wheel installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess


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
