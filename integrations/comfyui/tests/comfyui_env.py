"""What the ComfyUI node tests share (imported by conftest.py and test_nodes.py under this
unique name, so that a pytest run over several test folders finds no other ``conftest``):
the stand-in ComfyUI on ``sys.path``, the nodes loaded as ComfyUI loads a custom node, the
``ckpt-diff`` command, and one test's ComfyUI folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent  # integrations/comfyui, the folder users put in custom_nodes/

sys.path.insert(0, str(HERE / "standin"))

import server  # noqa: E402 - the stand-in, from the path above

SYNTH = {
    "base.safetensors": [],
    "ft1.safetensors": ["--delta", "7:0.1"],
    "ft2.safetensors": ["--delta", "9:0.1"],
}


def ckpt_diff_command() -> str:
    """The ``ckpt-diff`` command the wheel installed beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / ("ckpt-diff.exe" if os.name == "nt" else "ckpt-diff")
    found = str(beside) if beside.exists() else shutil.which("ckpt-diff")
    if found is None:
        pytest.fail("no ckpt-diff command: install the ckpt-diff wheel into this Python")
    return found


def load_nodes_package() -> ModuleType:
    """Imports integrations/comfyui as ComfyUI's ``load_custom_node`` (nodes.py) does: a
    spec from the folder's ``__init__.py`` under a module name made from its path, so the
    package's relative imports resolve as they do in ComfyUI."""
    name = str(PACKAGE).replace(".", "_x_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACKAGE / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class Comfy:
    """One test's ComfyUI folder and what the stand-in recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "models" / "checkpoints"
        self.loras = root / "models" / "loras"
        self.server = server.PromptServer()
        self.events: List[tuple] = []  # ("text", text) and ("progress", value, total)

    def files(self) -> Dict[str, List[str]]:
        return {
            "checkpoints": sorted(os.listdir(self.checkpoints)),
            "loras": sorted(os.listdir(self.loras)) if self.loras.exists() else [],
        }
