"""The ckpt-diff nodes: Block similarity, Recipe merge, Inspect / validate, LoRA extract.

Each node is a ComfyUI node class of the classic kind (ComfyUI's nodes.py): an
``INPUT_TYPES`` classmethod, ``RETURN_TYPES``/``RETURN_NAMES``, the method named by
``FUNCTION``, a ``CATEGORY``; the package's ``__init__.py`` maps them in
``NODE_CLASS_MAPPINGS``. They call the :mod:`ckpt_diff` module in ComfyUI's process (never
a subprocess), which streams over memory-mapped files: no tensor is loaded into torch or
onto the GPU, and a merge holds a few tensors per thread whatever the models' size.

Checkpoints are chosen by their names in ``models/checkpoints`` (``folder_paths``); merges
are written there and LoRAs into ``models/loras``, the first folder of each, never over an
existing file unless ``overwrite`` is on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import ckpt_diff
import comfy.model_management
import folder_paths

from . import chart, formatting
from .progress import comfy_progress, removing_on_interrupt
from .recipe_paths import resolve_recipe

__all__ = ["BlockSimilarity", "RecipeMerge", "InspectValidate", "LoraExtract"]

log = logging.getLogger("ckpt-diff")

CATEGORY = "ckpt-diff"

MERGE_DTYPES = [
    "as first input",
    "f16",
    "bf16",
    "f32",
    "f8_e4m3",
    "f8_e5m2",
    "scaled-fp8",
    "comfy-fp8",
    "int8",
    "nvfp4",
    "mxfp8",
]

EXAMPLE_RECIPE = """\
# models: NAME = a file in models/checkpoints
a = model_a.safetensors
b = model_b.safetensors
# the last step is written
OUT = a x (1-alpha) + b x alpha
    alpha = {OUT06..OUT11: 0.3, BASE: 1}
"""


def _checkpoints() -> list:
    return folder_paths.get_filename_list("checkpoints")


def _checkpoint(name: str) -> str:
    return folder_paths.get_full_path_or_raise("checkpoints", name)


def _file_state(folder: str, *names: str) -> str:
    """What ComfyUI's cache compares (``IS_CHANGED``): each file's size and mtime, so that
    a replaced checkpoint of the same name is analysed again."""
    parts = []
    for name in names:
        path = folder_paths.get_full_path(folder, name)
        st = os.stat(path) if path else None
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}" if st else f"{name}:missing")
    return "|".join(parts)


def output_path(folder: str, filename: str, overwrite: bool) -> str:
    """Where a node writes ``filename`` in the first folder of ``folder`` ("checkpoints",
    "loras"): ``.safetensors`` added when it has no extension; a name that leaves the
    folder (``..``, an absolute path) or an existing file without ``overwrite`` refused."""
    root = os.path.abspath(folder_paths.get_folder_paths(folder)[0])
    name = filename.strip()
    if not name:
        raise ValueError("filename is empty: name the file to write")
    if not os.path.splitext(name)[1]:
        name += ".safetensors"
    path = os.path.abspath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
        raise ValueError(
            f"filename '{filename}' leaves models/{folder}: give a name inside it "
            "(subfolders are fine)"
        )
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"'{name}' exists in {root}: turn on overwrite to replace it, or choose another "
            "filename"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def show_text(text: str, node_id: Optional[str]) -> None:
    """Logs ``text`` to ComfyUI's console and, when ComfyUI's server runs, shows it on the
    node (``PromptServer.instance.send_progress_text``, as ComfyUI's own nodes do)."""
    log.info("%s", text)
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:  # pragma: no cover - outside ComfyUI
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_progress_text(text, node_id)


class BlockSimilarity:
    """Two checkpoints compared block by block (``ckpt-diff sim``): the table as text and
    the chart as an IMAGE."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        names = _checkpoints()
        return {
            "required": {
                "ckpt_a": (names, {"tooltip": "The first checkpoint (models/checkpoints)."}),
                "ckpt_b": (names, {"tooltip": "The second checkpoint."}),
                "metric": (
                    ["cosine", "asim"],
                    {
                        "default": "cosine",
                        "tooltip": "cosine: the weights' cosine per block; asim: the "
                        "ASimilarity numbers of published block tables.",
                    },
                ),
                "blocks": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Rows to show, e.g. 'out' or 'IN04,OUT11' or "
                        "'OUT03..OUT10,te'; empty: every block and component.",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("table", "chart")
    OUTPUT_TOOLTIPS = ("The similarity per block, as text.", "The same as a chart.")
    FUNCTION = "compare"
    CATEGORY = CATEGORY
    DESCRIPTION = "How alike two checkpoints are, block by block (ckpt-diff sim)."

    @classmethod
    def IS_CHANGED(cls, ckpt_a: str, ckpt_b: str, metric: str, blocks: str, **_: Any) -> str:
        return _file_state("checkpoints", ckpt_a, ckpt_b) + f"|{metric}|{blocks}"

    def compare(
        self, ckpt_a: str, ckpt_b: str, metric: str, blocks: str, unique_id: Optional[str] = None
    ) -> Tuple[str, Any]:
        doc, array = self.table_and_chart(ckpt_a, ckpt_b, metric, blocks, unique_id)
        table = formatting.sim_table(doc)
        return (table, chart.to_image(array))

    @staticmethod
    def table_and_chart(
        ckpt_a: str, ckpt_b: str, metric: str, blocks: str, unique_id: Optional[str] = None
    ) -> Tuple[dict, Any]:
        """The ``sim`` document and the chart as a NumPy array ``[1, H, W, 3]`` in 0..1
        (what :func:`chart.to_image` makes the IMAGE of): the chart of ``sim``'s report
        for the cosine (the command draws it), bars drawn here for ASimilarity (whose
        command writes no report)."""
        with tempfile.TemporaryDirectory(prefix="ckpt-diff-sim-") as report:
            doc = ckpt_diff.sim(
                _checkpoint(ckpt_a),
                _checkpoint(ckpt_b),
                blocks=blocks.strip() or None,
                metric=metric,
                report=report if metric == "cosine" else None,
                progress=comfy_progress(unique_id),
            )
            title = f"{'ASimilarity' if metric == 'asim' else 'cosine similarity'} per block"
            array = chart.chart_array(report, formatting.sim_rows(doc), title)
        return doc, array


class RecipeMerge:
    """A merge recipe over checkpoint names, run in one streaming pass into
    models/checkpoints (``ckpt-diff merge``): the plan first, then the merge."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "recipe": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": EXAMPLE_RECIPE,
                        "tooltip": "The recipe (docs/commands/merge.md): NAME = checkpoint "
                        "name lines, then steps; the last step is written.",
                    },
                ),
                "filename": (
                    "STRING",
                    {
                        "default": "ckpt-diff-merge.safetensors",
                        "tooltip": "The file to write in models/checkpoints.",
                    },
                ),
                "dtype": (MERGE_DTYPES, {"default": "as first input"}),
                "overwrite": ("BOOLEAN", {"default": False}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("plan", "summary")
    OUTPUT_TOOLTIPS = (
        "What the merge reads and writes, checked before any tensor is read.",
        "What was written.",
    )
    FUNCTION = "merge"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Runs a merge recipe over checkpoints in one streaming pass and writes the result "
        "into models/checkpoints (ckpt-diff merge)."
    )

    def merge(
        self,
        recipe: str,
        filename: str,
        dtype: str,
        overwrite: bool,
        unique_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        out = output_path("checkpoints", filename, overwrite)
        primary = folder_paths.get_folder_paths("checkpoints")[0]
        resolved = resolve_recipe(
            recipe, primary, lambda p: folder_paths.get_full_path("checkpoints", p)
        )
        options: Dict[str, Any] = {
            "dtype": None if dtype == "as first input" else dtype,
            "force": overwrite,
            "paths_from": primary,
        }
        planned = ckpt_diff.merge(resolved.text, out, dry_run=True, **options)
        plan = formatting.plan_text(planned["plan"])
        for name, written, absolute in resolved.substituted:
            plan += f"\n{name} = {written}: found at {absolute}"
        show_text(plan, unique_id)
        # A Cancel while the inputs were being checked stops here, before the pass.
        comfy.model_management.throw_exception_if_processing_interrupted()
        with removing_on_interrupt(out):
            done = ckpt_diff.merge(
                resolved.text, out, progress=comfy_progress(unique_id), **options
            )
        summary = formatting.merged_text(done["merged"])
        show_text(summary, unique_id)
        return {"ui": {"text": [plan + "\n\n" + summary]}, "result": (plan, summary)}


class InspectValidate:
    """What a checkpoint is and what is wrong with it (``ckpt-diff inspect`` and
    ``validate``), as text."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "ckpt_name": (_checkpoints(), {"tooltip": "A checkpoint (models/checkpoints)."}),
                "what": (["inspect and validate", "inspect", "validate"],),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "inspect"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Architecture, components, dtypes and metadata of a checkpoint, and the problems "
        "validate finds (ckpt-diff inspect, validate)."
    )

    @classmethod
    def IS_CHANGED(cls, ckpt_name: str, what: str, **_: Any) -> str:
        return _file_state("checkpoints", ckpt_name) + f"|{what}"

    def inspect(self, ckpt_name: str, what: str, unique_id: Optional[str] = None) -> Dict[str, Any]:
        path = _checkpoint(ckpt_name)
        parts = []
        if what in ("inspect and validate", "inspect"):
            parts.append(formatting.inspect_text(ckpt_diff.inspect(path)))
        if what in ("inspect and validate", "validate"):
            doc = ckpt_diff.validate(path, progress=comfy_progress(unique_id))
            parts.append(formatting.validate_text(doc))
        text = "\n\n".join(parts)
        return {"ui": {"text": [text]}, "result": (text,)}


class LoraExtract:
    """A LoRA of a fine-tuned checkpoint against its base (``ckpt-diff lora extract``),
    written into models/loras."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        names = _checkpoints()
        return {
            "required": {
                "tuned": (names, {"tooltip": "The fine-tuned (or merged) checkpoint."}),
                "base": (names, {"tooltip": "The checkpoint it was made from."}),
                "filename": (
                    "STRING",
                    {"default": "ckpt-diff-lora.safetensors", "tooltip": "In models/loras."},
                ),
                "rank": ("INT", {"default": 4, "min": 1, "max": 1024}),
                "conv_rank": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 1024,
                        "tooltip": "Rank of 3x3 convolutions (a LoCon); 0 leaves them out, "
                        "as kohya's script does.",
                    },
                ),
                "dtype": (["f16", "bf16", "f32"], {"default": "f16"}),
                "overwrite": ("BOOLEAN", {"default": False}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    FUNCTION = "extract"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Extracts a LoRA (the truncated SVD of tuned - base per module) into models/loras "
        "(ckpt-diff lora extract)."
    )

    def extract(
        self,
        tuned: str,
        base: str,
        filename: str,
        rank: int,
        conv_rank: int,
        dtype: str,
        overwrite: bool,
        unique_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        out = output_path("loras", filename, overwrite)
        with removing_on_interrupt(out):
            doc = ckpt_diff.lora_extract(
                _checkpoint(tuned),
                _checkpoint(base),
                out,
                rank=rank,
                conv_rank=conv_rank or None,
                dtype=dtype,
                force=overwrite,
                progress=comfy_progress(unique_id),
            )
        text = formatting.lora_text(doc)
        show_text(text, unique_id)
        return {"ui": {"text": [text]}, "result": (text,)}
