"""ckpt-diff's ComfyUI nodes: copy or link this folder into ComfyUI's ``custom_nodes/``
and install the ``ckpt-diff`` wheel into ComfyUI's Python (README.md here).

ComfyUI imports this file as a package and reads ``NODE_CLASS_MAPPINGS`` (node type ->
class) and ``NODE_DISPLAY_NAME_MAPPINGS`` (node type -> the name shown in the menu).
"""

try:
    import ckpt_diff  # noqa: F401 - checked here for a clear message
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ckpt-diff's ComfyUI nodes need the ckpt_diff module: run `python -m pip install "
        "ckpt-diff` (or the wheel's path) with ComfyUI's own Python"
    ) from e

from .nodes import BlockSimilarity, InspectValidate, LoraExtract, RecipeMerge

NODE_CLASS_MAPPINGS = {
    "CkptDiffBlockSimilarity": BlockSimilarity,
    "CkptDiffRecipeMerge": RecipeMerge,
    "CkptDiffInspectValidate": InspectValidate,
    "CkptDiffLoraExtract": LoraExtract,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CkptDiffBlockSimilarity": "Block similarity (ckpt-diff)",
    "CkptDiffRecipeMerge": "Recipe merge (ckpt-diff)",
    "CkptDiffInspectValidate": "Inspect / validate (ckpt-diff)",
    "CkptDiffLoraExtract": "LoRA extract (ckpt-diff)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
