"""Fixtures: the stand-in ComfyUI on ``sys.path``, the nodes loaded as ComfyUI loads a
custom node, and a ComfyUI folder with small generated checkpoints.

The checkpoints come from ``ckpt-diff synth`` (SD1's real key layout at 1/16 of its widths,
8.6 MB each): a base and two fine-tunes of it, made once per session and hard-linked (or
copied) into each test's ``models/checkpoints``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List

import pytest

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent  # integrations/comfyui, the folder users put in custom_nodes/

sys.path.insert(0, str(HERE / "standin"))

import comfy.model_management  # noqa: E402 - the stand-in, from the path above
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
import server  # noqa: E402

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


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    for name, extra in SYNTH.items():
        subprocess.run(
            [
                ckpt_diff_command(),
                "synth",
                "model",
                str(out / name),
                "--scale",
                "16",
                "--seed",
                "1",
                "-q",
                *extra,
            ],
            check=True,
        )
    return out


@pytest.fixture(scope="session")
def pkg() -> ModuleType:
    return load_nodes_package()


@pytest.fixture
def nodes(pkg: ModuleType) -> ModuleType:
    """The package's ``nodes`` module (the node classes and their helpers)."""
    return sys.modules[pkg.__name__ + ".nodes"]


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


@pytest.fixture
def env(tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Comfy:
    """A ComfyUI base folder with the synth checkpoints in ``models/checkpoints``, the
    stand-in's registry pointed at it, no interrupt pending, and a recording server and
    progress hook."""
    folder_paths.set_base_path(str(tmp_path / "ComfyUI"))
    env = Comfy(tmp_path / "ComfyUI")
    env.checkpoints.mkdir(parents=True)
    for name in SYNTH:
        try:
            os.link(synth_dir / name, env.checkpoints / name)
        except OSError:
            shutil.copyfile(synth_dir / name, env.checkpoints / name)
    comfy.model_management.interrupt_current_processing(False)

    def hook(value: int, total: int, preview: object, node_id: object = None) -> None:
        env.events.append(("progress", value, total))

    comfy.utils.set_progress_bar_global_hook(hook)
    original = server.PromptServer.send_progress_text

    def send(self: server.PromptServer, text: str, node_id: str, sid: object = None) -> None:
        env.events.append(("text", text))
        original(self, text, node_id, sid)

    monkeypatch.setattr(server.PromptServer, "send_progress_text", send)
    # ckpt-diff's cache (input hashes, merge rates) in the test's folder, not the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield env
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.model_management.interrupt_current_processing(False)
