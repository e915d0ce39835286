"""The ckpt-diff ComfyUI nodes against the stand-in ComfyUI (tests/standin): the node
contract, each node's result against the ``ckpt_diff`` module or the ``ckpt-diff`` command
on the same files, ComfyUI's interrupt, and the recipe's checkpoint names.

Run: ``python -m pytest integrations/comfyui/tests`` with the ckpt-diff wheel, pytest, NumPy
and Pillow installed (torch is optional: without it the IMAGE is checked as the NumPy array
``chart.to_image`` would convert, and the torch test is skipped).
"""

from __future__ import annotations

import inspect as pyinspect
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import ckpt_diff
import numpy as np
import pytest

# comfyui_env puts the stand-in ComfyUI on sys.path: it comes before the imports below.
from comfyui_env import Comfy, ckpt_diff_command

import comfy.model_management
import comfy.utils
import folder_paths

CKPTS = ["base.safetensors", "ft1.safetensors", "ft2.safetensors"]

RECIPE = """\
# a block-weighted merge and a difference, as a ComfyUI user writes it
base = base.safetensors
ft1  = ft1.safetensors
ft2  = ft2.safetensors   # the second fine-tune
mix  = ft1 x 0.6 + ft2 x 0.4
OUT  = mix x (1-alpha) + (ft2 - base) x alpha
    alpha = {OUT06..OUT11: 0.3, BASE: 0.1}
"""

# Types ComfyUI's nodes declare (comfy/comfy_types/node_typing.py, IO) that these use.
KNOWN_TYPES = {"STRING", "IMAGE", "INT", "FLOAT", "BOOLEAN"}


def sub(pkg: ModuleType, name: str) -> ModuleType:
    return sys.modules[f"{pkg.__name__}.{name}"]


@pytest.fixture
def no_torch(pkg: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The IMAGE left as the NumPy array ``chart.to_image`` would make a tensor of."""
    monkeypatch.setattr(sub(pkg, "chart"), "to_image", lambda array: array)


# --- the contract ------------------------------------------------------------------


def test_every_mapped_class_follows_the_node_contract(pkg: ModuleType, env: Comfy) -> None:
    assert set(pkg.NODE_CLASS_MAPPINGS) == set(pkg.NODE_DISPLAY_NAME_MAPPINGS)
    assert len(pkg.NODE_CLASS_MAPPINGS) == 4
    for key, cls in pkg.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        assert isinstance(types["required"], dict), key
        assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES, key
        assert all(t in KNOWN_TYPES for t in cls.RETURN_TYPES), key
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), key
        assert isinstance(cls.CATEGORY, str) and isinstance(cls.DESCRIPTION, str)
        assert isinstance(getattr(cls, "OUTPUT_NODE", False), bool)
        method = getattr(cls(), cls.FUNCTION)
        params = pyinspect.signature(method).parameters
        # ComfyUI calls FUNCTION with every required and hidden input as a keyword.
        for name in [*types["required"], *types.get("hidden", {})]:
            assert name in params, (key, name)
        for name, spec in types["required"].items():
            assert isinstance(spec, tuple) and spec, (key, name)
            assert isinstance(spec[0], list) or spec[0] in KNOWN_TYPES, (key, name)
            if len(spec) > 1:
                assert isinstance(spec[1], dict), (key, name)


def test_checkpoint_inputs_list_the_checkpoints_folder(pkg: ModuleType, env: Comfy) -> None:
    (env.checkpoints / "sub").mkdir()
    os.link(env.checkpoints / "ft1.safetensors", env.checkpoints / "sub" / "x.safetensors")
    (env.checkpoints / "notes.txt").write_text("not a checkpoint")
    names = folder_paths.get_filename_list("checkpoints")
    assert names == CKPTS + [os.path.join("sub", "x.safetensors")]
    inputs = {
        "CkptDiffBlockSimilarity": ["ckpt_a", "ckpt_b"],
        "CkptDiffRecipeMerge": [],
        "CkptDiffInspectValidate": ["ckpt_name"],
        "CkptDiffLoraExtract": ["tuned", "base"],
    }
    for key, names_in in inputs.items():
        required = pkg.NODE_CLASS_MAPPINGS[key].INPUT_TYPES()["required"]
        for name in names_in:
            assert required[name][0] == names, (key, name)


# --- Block similarity ------------------------------------------------------------------


def parse_table(table: str) -> dict:
    """``label -> similarity`` from the node's table (lines ending in a percentage)."""
    rows = {}
    for line in table.splitlines():
        if line.endswith("%"):
            label, value = line.rsplit(None, 1)
            rows[label.strip()] = float(value[:-1]) / 100
    return rows


def test_block_similarity_table_equals_ckpt_diff_sim(
    pkg: ModuleType, env: Comfy, no_torch: None
) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffBlockSimilarity"]()
    table, image = node.compare("base.safetensors", "ft1.safetensors", "cosine", "", "7")
    doc = ckpt_diff.sim(env.checkpoints / "base.safetensors", env.checkpoints / "ft1.safetensors")
    rows = parse_table(table)
    expected = {r["label"]: r["similarity"] for r in doc["rows"]}
    expected["mean of 25 blocks"] = doc["totals"]["block_mean"]["similarity"]
    expected["U-Net, flattened"] = doc["totals"]["flat_unet"]["similarity"]
    expected["all rows shown, flattened"] = doc["totals"]["flat_all"]["similarity"]
    assert rows.keys() == expected.keys()
    for label, value in expected.items():
        assert rows[label] == pytest.approx(value, abs=0.5e-6), label  # printed to 1e-4 %
    assert "A: base.safetensors" in table and "B: ft1.safetensors" in table
    # The IMAGE: [batch, height, width, channels], float32 in 0..1, the report's chart.
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3
    assert image.shape[1] >= 200 and image.shape[2] >= 200
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.01
    # A pass this short may end before its first progress report (every 50 ms).
    assert ("progress", 0, 0) not in env.events


def test_block_similarity_rows_and_asim(pkg: ModuleType, env: Comfy, no_torch: None) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffBlockSimilarity"]()
    table, _ = node.compare("ft1.safetensors", "ft2.safetensors", "cosine", "out", None)
    assert [k for k in parse_table(table) if k.startswith("OUT")] == [
        f"OUT{i:02}" for i in range(12)
    ]
    assert not any(k.startswith("IN") for k in parse_table(table))
    table, image = node.compare("ft1.safetensors", "ft2.safetensors", "asim", "", None)
    doc = ckpt_diff.sim(
        env.checkpoints / "ft1.safetensors", env.checkpoints / "ft2.safetensors", metric="asim"
    )
    rows = parse_table(table)
    assert rows["total"] == pytest.approx(doc["total"], abs=0.5e-6)
    for row in doc["rows"]:
        assert rows[row["block"]] == pytest.approx(row["similarity"], abs=0.5e-6)
    assert image.shape[0] == 1 and image.shape[3] == 3 and 0 <= image.min() <= image.max() <= 1


def test_chart_to_image_is_a_torch_tensor(pkg: ModuleType) -> None:
    torch = pytest.importorskip("torch")
    array = np.random.default_rng(0).random((1, 8, 16, 3), dtype=np.float32)
    image = sub(pkg, "chart").to_image(array)
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, 8, 16, 3)


# --- Recipe merge ------------------------------------------------------------------


def test_recipe_merge_equals_the_cli_byte_for_byte(
    pkg: ModuleType, env: Comfy, tmp_path: Path
) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    result = node.merge(RECIPE, "merged", "as first input", False, "12")
    plan, summary = result["result"]
    written = env.checkpoints / "merged.safetensors"
    assert written.exists()
    cli_out = tmp_path / "cli.safetensors"
    subprocess.run(
        [
            ckpt_diff_command(),
            "merge",
            "--text",
            RECIPE,
            "--paths-from",
            str(env.checkpoints),
            "-o",
            str(cli_out),
            "-q",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert written.read_bytes() == cli_out.read_bytes()
    # The plan is shown on the node (and in the console) before the pass starts.
    kinds = [e[0] for e in env.events]
    assert env.events[0] == ("text", plan) and "progress" in kinds
    assert kinds.index("progress") > 0
    assert plan.startswith("plan: ") and "UNET: reads" in plan
    assert "wrote " in summary and summary in [e[1] for e in env.events if e[0] == "text"]
    assert env.server.messages[0] == ("12", plan)
    assert env.files()["checkpoints"] == sorted(CKPTS + ["merged.safetensors"])


def test_recipe_merge_with_dtype_and_overwrite(pkg: ModuleType, env: Comfy) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    node.merge(RECIPE, "m.safetensors", "as first input", False, None)
    with pytest.raises(ValueError, match="turn on overwrite"):
        node.merge(RECIPE, "m.safetensors", "bf16", False, None)
    node.merge(RECIPE, "m.safetensors", "bf16", True, None)
    doc = ckpt_diff.inspect(env.checkpoints / "m.safetensors")
    assert doc["dtypes"][0]["dtype"] == "BF16"
    with pytest.raises(ValueError, match="leaves models/checkpoints"):
        node.merge(RECIPE, "../escape.safetensors", "as first input", False, None)


def test_recipe_merge_interrupted_leaves_no_file(pkg: ModuleType, env: Comfy) -> None:
    """ComfyUI's Cancel during the pass: the stand-in's flag is set from the progress hook
    at the first progress report (as the server's /interrupt route would set it mid-run);
    the node raises ComfyUI's InterruptProcessingException and leaves neither the output
    nor a temporary file. (On files this small an optimised build may report only the end
    of the pass; a Cancel there is covered too, see the next tests.)"""
    calls = []

    def cancel_at_first_report(value: int, total: int, preview: Any, node_id: Any = None) -> None:
        calls.append((value, total))
        comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_at_first_report)
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    before = env.files()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        node.merge(RECIPE, "cancelled.safetensors", "as first input", False, "3")
    assert len(calls) == 1  # the first report raised
    assert env.files() == before
    assert not comfy.model_management.processing_interrupted()  # the check cleared it


def test_cancel_while_the_plan_is_shown_stops_before_the_pass(
    pkg: ModuleType, env: Comfy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cancel_on_plan(text: str, node_id: Any) -> None:
        env.events.append(("text", text))
        comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(env.server, "send_progress_text", cancel_on_plan)
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        node.merge(RECIPE, "early.safetensors", "as first input", False, "4")
    assert [e[0] for e in env.events] == ["text"]  # the plan, and no progress
    assert env.files()["checkpoints"] == CKPTS


def test_recipe_names_in_another_checkpoint_folder(
    pkg: ModuleType, env: Comfy, tmp_path: Path
) -> None:
    """A name found only in a second checkpoint folder (extra_model_paths.yaml) is
    rewritten to its absolute path; the rest of the recipe is read from the first."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.replace(env.checkpoints / "ft2.safetensors", other / "ft2.safetensors")
    folder_paths.add_model_folder_path("checkpoints", str(other))
    assert "ft2.safetensors" in folder_paths.get_filename_list("checkpoints")
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    plan, _ = node.merge(RECIPE, "two-folders", "as first input", False, None)["result"]
    assert f"ft2 = ft2.safetensors: found at {other / 'ft2.safetensors'}" in plan
    assert (env.checkpoints / "two-folders.safetensors").exists()


def test_recipe_merge_errors_are_ckpt_diff_errors(pkg: ModuleType, env: Comfy) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffRecipeMerge"]()
    with pytest.raises(ckpt_diff.CkptDiffError):
        node.merge("a = missing.safetensors\nOUT = a x 1\n", "x", "as first input", False, None)
    with pytest.raises(ckpt_diff.BadInputError):
        node.merge("a = base.safetensors\nOUT = a x (\n", "x", "as first input", False, None)
    assert env.files()["checkpoints"] == CKPTS


def test_resolve_recipe_rewrites_only_what_it_must(pkg: ModuleType, tmp_path: Path) -> None:
    resolve = sub(pkg, "recipe_paths").resolve_recipe
    primary = tmp_path / "primary"
    primary.mkdir()
    (primary / "here.safetensors").write_bytes(b"")
    found = {"there.safetensors": "/x/there.safetensors", "sub/y.ckpt": "/x/sub/y.ckpt"}
    text = (
        "a = here.safetensors\n"
        'b = "there.safetensors"  # quoted\n'
        "c = sub/y.ckpt\r\n"
        "d = /abs/z.safetensors\n"
        "e = gone.safetensors\n"
        "w = 0.5\n"
        "OUT = a x w + b x (1-w)\n"
        "    alpha = {OUT: 1}\n"
    )
    out = resolve(text, str(primary), found.get)
    assert out.text == (
        "a = here.safetensors\n"
        'b = "/x/there.safetensors" # quoted\n'
        'c = "/x/sub/y.ckpt"\r\n'
        "d = /abs/z.safetensors\n"
        "e = gone.safetensors\n"
        "w = 0.5\n"
        "OUT = a x w + b x (1-w)\n"
        "    alpha = {OUT: 1}\n"
    )
    assert [s[0] for s in out.substituted] == ["b", "c"]


# --- Inspect / validate ------------------------------------------------------------


def test_inspect_validate_text(pkg: ModuleType, env: Comfy) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffInspectValidate"]()
    (text,) = node.inspect("ft1.safetensors", "inspect and validate", None)["result"]
    path = env.checkpoints / "ft1.safetensors"
    doc = ckpt_diff.inspect(path)
    report = ckpt_diff.validate(path)
    assert doc["arch"]["summary"] in text
    for comp in doc["components"]:
        assert f"{comp['component']} ({comp['label']}): {comp['tensors']} tensors" in text
    for finding in report["files"][0]["findings"]:
        assert f"{finding['severity']}: {finding['message']}" in text
    (only,) = node.inspect("ft1.safetensors", "validate", None)["result"]
    assert only in text and "components:" not in only


# --- LoRA extract --------------------------------------------------------------------


def test_lora_extract_writes_a_lora_inspect_reads(pkg: ModuleType, env: Comfy) -> None:
    node = pkg.NODE_CLASS_MAPPINGS["CkptDiffLoraExtract"]()
    (summary,) = node.extract(
        "ft1.safetensors", "base.safetensors", "ft1-lora", 4, 0, "f16", False, "5"
    )["result"]
    lora = env.loras / "ft1-lora.safetensors"
    doc = ckpt_diff.inspect(lora)
    assert doc["command"] == "inspect-lora" and doc["network"] == "LoRA"
    modules = len(doc["modules"])
    assert doc["arch"] == "sd1" and modules > 0
    assert all(m["rank"] == 4 for m in doc["modules"])
    assert [tuple(r) for r in np.asarray(doc["ranks"]).tolist()] == [(4.0, modules)]
    assert f"{modules} modules of SD1 (LDM)" in summary
    assert env.server.messages[-1] == ("5", summary)
    assert env.files()["checkpoints"] == CKPTS
