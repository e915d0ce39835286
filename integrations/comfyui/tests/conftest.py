"""Fixtures: the nodes loaded as ComfyUI loads a custom node, and a ComfyUI folder with small
generated checkpoints (comfyui_env.py has the helpers).

The checkpoints come from ``ckpt-diff synth`` (SD1's real key layout at 1/16 of its widths,
8.6 MB each): a base and two fine-tunes of it, made once per session and hard-linked (or
copied) into each test's ``models/checkpoints``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

# comfyui_env puts the stand-in ComfyUI on sys.path: it comes before the imports below.
from comfyui_env import SYNTH, Comfy, ckpt_diff_command, load_nodes_package

import comfy.model_management
import comfy.utils
import folder_paths
import server


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
