"""Recipe text over ComfyUI checkpoint names: which folder its relative paths are from, and
the model lines whose file lies in another checkpoint folder.

A recipe names its models with lines ``NAME = PATH`` (docs/commands/merge.md). In ComfyUI a
user writes PATH as the node lists checkpoints: a name relative to a checkpoint folder
(``sd15/dreamshaper_8.safetensors``). The node hands the recipe text to
``ckpt_diff.merge(text, paths_from=PRIMARY)``, where PRIMARY is the first folder of
``folder_paths.get_folder_paths("checkpoints")`` (``models/checkpoints``, or the folder an
``extra_model_paths.yaml`` marks as default), so a recipe over files in that folder runs
exactly as ``ckpt-diff merge --text RECIPE --paths-from PRIMARY`` and stores its text
unchanged in the output's metadata.

Only a model line whose relative PATH is not in PRIMARY but is found by
``folder_paths.get_full_path("checkpoints", PATH)`` (a folder that ``extra_model_paths.yaml``
adds) is rewritten, to the file's absolute path in quotes; the recipe kept in the merged
file's metadata then shows that path. Absolute paths, ``~`` paths, ``glob(...)`` and
``list(...)`` are left as written (relative ones are from PRIMARY).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

__all__ = ["Resolved", "resolve_recipe", "model_path"]

# The extensions ckpt-diff's recipe parser takes as a model path without quotes
# (crates/ckpt-ops/src/merge/recipe/mod.rs, `as_path`).
_PATH_EXTENSIONS = (".safetensors", ".sft", ".st", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*$")


@dataclass
class Resolved:
    """A recipe ready for ``ckpt_diff.merge``: its text, and what was rewritten.

    ``substituted`` lists ``(name, path as written, absolute path)`` for each model line
    pointed at a file in another checkpoint folder.
    """

    text: str
    substituted: List[tuple] = field(default_factory=list)


def model_path(rhs: str) -> Optional[str]:
    """The path a recipe line's right-hand side names, or ``None`` when it is not a model
    path: quoted, or one token containing ``/`` or starting with ``~``, or ending in a
    checkpoint extension (the recipe parser's rule)."""
    rhs = rhs.strip()
    if len(rhs) >= 2 and rhs.startswith('"') and rhs.endswith('"'):
        return rhs[1:-1]
    if not rhs or any(c.isspace() for c in rhs):
        return None
    if rhs.lower().endswith(_PATH_EXTENSIONS) or "/" in rhs or rhs.startswith("~"):
        return rhs
    return None


def _split_comment(line: str) -> tuple:
    """``line`` as (code, comment): ``#`` outside double quotes starts a comment."""
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i], line[i:]
    return line, ""


def resolve_recipe(
    text: str,
    primary: str,
    find: Callable[[str], Optional[str]],
) -> Resolved:
    """``text`` with each top-level model line whose relative path is missing from
    ``primary`` but found by ``find`` (``folder_paths.get_full_path`` for "checkpoints")
    rewritten to that absolute path; every other line as written."""
    out: List[str] = []
    substituted: List[tuple] = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        code, comment = _split_comment(body)
        if code[:1].isspace() or "=" not in code:
            out.append(line)  # a step's parameter, a comment, a blank line
            continue
        name, rhs = code.split("=", 1)
        path = model_path(rhs)
        if (
            not _NAME.match(name.strip())
            or path is None
            or os.path.isabs(path)
            or path.startswith("~")
            or os.path.isfile(os.path.join(primary, path))
        ):
            out.append(line)
            continue
        found = find(path)
        if found is None or '"' in found:
            out.append(line)  # ckpt-diff reports the missing file, from PRIMARY
            continue
        absolute = os.path.abspath(found)
        substituted.append((name.strip(), path, absolute))
        out.append(f'{name.rstrip()} = "{absolute}"{" " + comment if comment else ""}{ending}')
    return Resolved("".join(out), substituted)
