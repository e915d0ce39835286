"""ckpt-diff from Python: analyze, diff and merge diffusion-model checkpoints.

Every function runs the same code as the ``ckpt-diff`` command, in this process, and returns
what its ``--json`` prints as plain Python objects (dicts, lists, floats, with the same field
names; docs/output.md), matrices as NumPy arrays when NumPy is installed (nested lists
otherwise). No tensor data is copied into Python.

- The GIL is released while a command reads; other Python threads run.
- ``progress=callable`` is called as ``progress(what, done, total)`` on the calling thread
  when the progress moved (``what`` is "reading", "merging", ...; ``done`` and ``total`` are
  bytes, or items for a counting step). An exception it raises stops the command.
- Ctrl-C stops the pass (a merge removes its temporary file) and raises
  ``KeyboardInterrupt``.
- Failures raise :mod:`ckpt_diff.errors` exceptions with the command line's message.

Paths are ``str`` or ``os.PathLike``. :func:`run` runs any command line with ``--json``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from ckpt_diff import _native
from ckpt_diff.errors import BadInputError, CkptDiffError, CkptIOError, RefusedFormatError

__version__: str = _native.__version__

__all__ = [
    "inspect",
    "sim",
    "l2",
    "hash",
    "validate",
    "merge",
    "lora_extract",
    "lineage",
    "run",
    "CkptDiffError",
    "BadInputError",
    "CkptIOError",
    "RefusedFormatError",
]

PathArg = Union[str, "os.PathLike[str]"]
Progress = Optional[Callable[[str, int, int], Any]]


def run(*args: Union[str, PathArg], progress: Progress = None) -> list:
    """Runs ``ckpt-diff ARGS...`` in this process and returns the documents its ``--json``
    prints (one per command; ``merge`` gives its plan, then its summary; none for commands
    without a JSON result, such as ``index add``), matrices as arrays.

    >>> run("sim", "a.safetensors", "b.safetensors", "--blocks", "out")  # doctest: +SKIP
    """
    docs, _code = _call([*map(_arg, args)], progress)
    return docs


def inspect(*paths: PathArg, progress: Progress = None) -> Any:
    """Architecture, variant, components, dtypes and metadata of each file (``ckpt-diff
    inspect --json``): a dict for one file, a list of them for several."""
    _need(paths, "inspect")
    return _one(["inspect", *map(_arg, paths)], progress)


def sim(
    a: PathArg,
    b: PathArg,
    blocks: Union[None, str, Iterable[str]] = None,
    metric: str = "cosine",
    *,
    keys: Optional[str] = None,
    per_tensor: bool = False,
    arch: Optional[str] = None,
    base: Optional[PathArg] = None,
    like: Optional[str] = None,
    precision: Optional[str] = None,
    seed: Optional[int] = None,
    report: Optional[PathArg] = None,
    progress: Progress = None,
) -> dict:
    """Block-by-block similarity of two checkpoints (``ckpt-diff sim A B --json``).

    ``blocks``: rows to show ("out", "IN04,OUT11", ["OUT03..OUT10", "te"]); ``metric``:
    "cosine" (the weights' cosine) or "asim" (ASimilarity; then ``like``, ``precision``,
    ``seed``); ``keys``: a regular expression over canonical key names; ``base``: with a
    LoRA and a checkpoint, the checkpoint's base; ``report``: also write a report folder.
    """
    args = ["sim", _arg(a), _arg(b), "--metric", metric]
    args += _opt("--blocks", _blocks(blocks))
    args += _opt("--keys", keys) + _opt("--arch", arch) + _opt("--base", base)
    args += _opt("--like", like) + _opt("--precision", precision) + _opt("--seed", seed)
    args += _opt("--report", report) + _flag("--per-tensor", per_tensor)
    return _one(args, progress)


def l2(
    base: PathArg,
    models: Sequence[PathArg],
    *,
    keys: Optional[str] = None,
    arch: Optional[str] = None,
    report: Optional[PathArg] = None,
    log: bool = False,
    progress: Progress = None,
) -> dict:
    """L2 distances of ``models`` from ``base`` per block, the pairwise matrices and the
    maps (``ckpt-diff l2 --base BASE M... --json``): ``from_base``, ``relative`` and each
    scope's ``distance`` and ``delta_cosine`` are arrays (models x rows, models x models).
    """
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    _need(models, "l2")
    args = ["l2", "--base", _arg(base), *map(_arg, models)]
    args += _opt("--keys", keys) + _opt("--arch", arch) + _opt("--report", report)
    args += _flag("--log", log)
    return _one(args, progress)


def hash(  # noqa: A001 - the command's name
    *paths: PathArg, components: bool = False, progress: Progress = None
) -> Any:
    """File hashes as Civitai and A1111 show them, and per component with ``components``
    (``ckpt-diff hash --json``): a dict for one file, a list for several."""
    _need(paths, "hash")
    return _one(["hash", *map(_arg, paths), *_flag("--components", components)], progress)


def validate(*paths: PathArg, progress: Progress = None) -> Any:
    """Structure, pruning, dtypes, NaN/Inf and position_ids checks (``ckpt-diff validate
    --json``). Findings are data, not exceptions: see each finding's ``severity``."""
    _need(paths, "validate")
    return _one(["validate", *map(_arg, paths)], progress)


def merge(
    recipe: PathArg,
    out: Optional[PathArg] = None,
    dtype: Optional[str] = None,
    dry_run: bool = False,
    *,
    quant: Optional[str] = None,
    precision: Optional[str] = None,
    missing: Optional[str] = None,
    force: bool = False,
    no_input_hashes: bool = False,
    paths_from: Optional[PathArg] = None,
    progress: Progress = None,
) -> dict:
    """Merges checkpoints from a recipe in one streamed pass (``ckpt-diff merge --json``).

    ``recipe`` is a recipe file (``os.PathLike``, or a ``str`` without "=") whose relative
    paths are from its folder, or the recipe's text (a ``str`` with "="), whose relative
    paths are from ``paths_from`` (default: the current folder). ``out`` is the output (``.safetensors``, or ``.gguf``
    with ``quant``); the recipe's ``OUT`` line names what is written.

    Returns ``{"plan": ..., "merged": ...}``: the plan (what each component reads, by which
    method, what is copied or left out) and, unless ``dry_run``, the summary of what was
    written. A plan that finds problems raises ``BadInputError`` before any data is read.
    """
    if isinstance(recipe, str) and "=" in recipe:
        args = ["merge", "--text", recipe] + _opt("--paths-from", paths_from)
    elif paths_from is not None:
        raise BadInputError("paths_from= goes with a recipe given as text")
    else:
        args = ["merge", _arg(recipe)]
    if out is None and not dry_run:
        raise BadInputError("merge needs out= (the output file) unless dry_run=True")
    args += _opt("-o", out) + _opt("--dtype", dtype) + _opt("--quant", quant)
    args += _opt("--precision", precision) + _opt("--missing", missing)
    args += _flag("--force", force) + _flag("--dry-run", dry_run)
    args += _flag("--no-input-hashes", no_input_hashes)
    if out is None:
        # A dry run plans for an output name; nothing is written.
        args += ["-o", "dry-run.safetensors"]
    docs, _code = _call(args, progress)
    return {"plan": docs[0], "merged": docs[1] if len(docs) > 1 else None}


def lora_extract(
    tuned: PathArg,
    base: PathArg,
    out: PathArg,
    rank: Union[int, str, None] = None,
    *,
    conv_rank: Union[int, str, None] = None,
    energy: Optional[float] = None,
    max_rank: Optional[int] = None,
    clamp_quantile: Optional[float] = None,
    min_diff: Optional[float] = None,
    iterations: Optional[int] = None,
    seed: Optional[int] = None,
    dtype: Optional[str] = None,
    force: bool = False,
    progress: Progress = None,
) -> dict:
    """Extracts a LoRA of ``tuned`` from ``base`` into ``out`` (``ckpt-diff lora extract
    --json``): per block the modules, the energy kept and ‖ΔW‖. ``rank`` is a number or
    "auto" (then ``energy``); the other options are the command's."""
    args = ["lora", "extract", _arg(tuned), "--base", _arg(base), "-o", _arg(out)]
    args += _opt("--rank", rank) + _opt("--conv-rank", conv_rank) + _opt("--energy", energy)
    args += _opt("--max-rank", max_rank) + _opt("--clamp-quantile", clamp_quantile)
    args += _opt("--min-diff", min_diff) + _opt("--iterations", iterations)
    args += _opt("--seed", seed) + _opt("--dtype", dtype) + _flag("--force", force)
    return _one(args, progress)


def lineage(
    target: PathArg,
    *,
    index: Optional[PathArg] = None,
    base: Optional[str] = None,
    top: Optional[int] = None,
    verify: bool = False,
    report: Optional[PathArg] = None,
    progress: Progress = None,
) -> dict:
    """What ``target`` was made of, from the lineage index (``ckpt-diff lineage --json``):
    exact matches, the nearest models, a recipe with error bars; ``verify`` checks the
    recipe on the weights. ``index`` defaults to the command's (its cache folder); build it
    with ``run("index", "add", ...)`` or ``ckpt-diff index add``."""
    args = ["lineage", _arg(target)] + _opt("--index", index) + _opt("--base", base)
    args += _opt("--top", top) + _flag("--verify", verify) + _opt("--report", report)
    return _one(args, progress)


# --- plumbing -------------------------------------------------------------------------


def _arg(x: Any) -> str:
    return os.fspath(x) if isinstance(x, os.PathLike) else str(x)


def _opt(flag: str, value: Any) -> list:
    return [] if value is None else [flag, _arg(value)]


def _flag(flag: str, on: bool) -> list:
    return [flag] if on else []


def _blocks(blocks: Union[None, str, Iterable[str]]) -> Optional[str]:
    if blocks is None or isinstance(blocks, str):
        return blocks
    return ",".join(blocks)


def _need(items: Sequence[Any], command: str) -> None:
    if not items:
        raise BadInputError(f"{command} needs at least one file")


def _one(args: list, progress: Progress) -> Any:
    docs, _code = _call(args, progress)
    return docs[0]


def _call(args: list, progress: Progress) -> tuple:
    docs, code = _native.call(args, progress)
    return [_arrays(d) for d in docs], code


# The fields that hold matrices (docs/output.md): l2's `from_base`, `relative`,
# `row_delta_cosine` (one matrix per row) and each scope's `distance`, `delta_cosine` and
# `mds.coords`; the LoRAs' `pairwise` distances; fit's `global_weights`. Other lists of
# lists (a LoRA's `[rank, count]` pairs) stay lists.
MATRICES = frozenset(
    {"from_base", "relative", "row_delta_cosine", "distance", "delta_cosine", "coords",
     "pairwise", "global_weights"}
)


def _arrays(value: Any, name: str = "") -> Any:
    """``value`` with every matrix field (:data:`MATRICES`) as a float64 NumPy array, JSON's
    null as nan, when NumPy is installed."""
    if isinstance(value, dict):
        return {k: _arrays(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if name in MATRICES and _shape(value) is not None:
            np = _numpy()
            if np is not None:
                return np.array(_nan(value), dtype=np.float64)
            return value
        return [_arrays(v) for v in value]
    return value


def _shape(value: Any) -> Optional[tuple]:
    """The shape of ``value`` if it is a list of numbers (or nulls), or a list of equally
    shaped such lists (what NumPy makes an array of); else ``None``."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(x, list) for x in value):
        shapes = {_shape(x) for x in value}
        if len(shapes) != 1 or None in shapes:
            return None
        return (len(value), *shapes.pop())
    if all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in value):
        return (len(value),)
    return None


def _nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan(x) for x in value]
    return float("nan") if value is None else value


_NUMPY: Any = ...


def _numpy() -> Any:
    """NumPy, imported at the first matrix (a tenth of a second that a command without
    matrices does not pay), or ``None`` when it is not installed."""
    global _NUMPY
    if _NUMPY is ...:
        try:
            import numpy
        except ImportError:  # pragma: no cover - exercised by the no-NumPy test
            numpy = None
        _NUMPY = numpy
    return _NUMPY
