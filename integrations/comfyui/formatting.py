"""Plain-text renderings of ckpt-diff's ``--json`` documents for ComfyUI's STRING outputs.

Each function takes one document as :mod:`ckpt_diff` returns it (the field names of
docs/output.md) and returns lines of text: no box drawing, so that the text reads the same in
ComfyUI's text preview, in the console and in a log. Nothing here reads a file.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional

__all__ = [
    "human_bytes",
    "human_count",
    "sim_table",
    "sim_rows",
    "plan_text",
    "merged_text",
    "inspect_text",
    "validate_text",
    "lora_text",
]

# What the totals of `sim --json` mean (the command's own row labels).
_TOTAL_LABELS = {
    "block_mean": "mean of {over} blocks",
    "flat_unet": "U-Net, flattened",
    "flat_all": "all rows shown, flattened",
}


def human_bytes(n: Optional[float]) -> str:
    """``n`` bytes in decimal units, as the command line prints them (``8.6 MB``)."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} TB"  # pragma: no cover - the loop returns at GB


def human_count(n: Optional[float]) -> str:
    """A parameter count as the command line prints it (``491.4K``, ``3.38M``)."""
    if n is None:
        return "?"
    if n < 1000:
        return str(int(n))
    if n < 1e6:
        return f"{n / 1e3:.1f}K"
    if n < 1e9:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e9:.2f}B"


def _percent(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x * 100:.4f}%"


def sim_rows(doc: Mapping[str, Any]) -> List[tuple]:
    """The rows of a ``sim`` document as ``(label, similarity)`` pairs, totals last: the
    content of :func:`sim_table`, for callers that want numbers."""
    rows = [(r.get("label") or r.get("block"), r.get("similarity")) for r in doc["rows"]]
    for key, total in (doc.get("totals") or {}).items():
        label = _TOTAL_LABELS.get(key, key).format(over=total.get("over", "?"))
        rows.append((label, total.get("similarity")))
    if "total" in doc:  # `--metric asim` has one total
        rows.append(("total", doc["total"]))
    return rows


def sim_table(doc: Mapping[str, Any]) -> str:
    """A ``sim`` document as a table: the two files, the metric, then one line per block
    (label, similarity in percent to four decimals as the command prints it) and the
    totals."""
    models = doc.get("models", [])
    lines = []
    for tag, model in zip("AB", models):
        lines.append(f"{tag}: {model.get('name')} ({model.get('detection', '')})")
    lines.append(f"metric: {doc.get('metric')}")
    lines.append("")
    rows = sim_rows(doc)
    width = max([len("block")] + [len(str(label)) for label, _ in rows])
    lines.append(f"{'block':<{width}}  {'similarity':>10}")
    for label, similarity in rows:
        lines.append(f"{label:<{width}}  {_percent(similarity):>10}")
    notes = doc.get("notes") or {}
    for key in ("only_in_a", "only_in_b", "shape_mismatch", "integer_different"):
        if notes.get(key):
            lines.append(f"note: {len(notes[key])} keys {key.replace('_', ' ')}")
    return "\n".join(lines)


def plan_text(plan: Mapping[str, Any]) -> str:
    """A merge plan (``merge --dry-run --json``'s first document): inputs, what each
    component reads and how, output size, memory, predicted time and problems."""
    inputs = plan.get("inputs", [])
    lines = [
        f"plan: {plan.get('output')} from {len(inputs)} inputs "
        f"({human_bytes(sum(i.get('bytes', 0) for i in inputs))}), {plan.get('arch')}"
    ]
    for model in inputs:
        lines.append(
            f"  {model.get('name')} = {model.get('path')} "
            f"({human_bytes(model.get('bytes'))}, {model.get('arch')})"
        )
    for comp in plan.get("components", []):
        lines.append(
            f"  {comp.get('component')}: reads {', '.join(comp.get('reads', [])) or 'nothing'}; "
            f"{', '.join(comp.get('methods', []))}; {comp.get('merged')} merged, "
            f"{comp.get('copied')} copied"
        )
    for key, what in (("copied", "copied as is"), ("skipped", "left out")):
        if plan.get(key):
            lines.append(f"  {len(plan[key])} keys {what}")
    lines.append(
        f"output: {human_bytes(plan.get('output_bytes'))} "
        f"({human_bytes(plan.get('free_bytes'))} free there); "
        f"reads {human_bytes(plan.get('read_bytes'))} of tensors"
    )
    memory = plan.get("memory") or {}
    if memory:
        lines.append(
            f"memory: at most {human_bytes(memory.get('anonymous'))} anonymous on "
            f"{memory.get('threads')} threads; {human_bytes(memory.get('mapped'))} of input "
            "pages mapped at once"
        )
    if plan.get("predicted_seconds") is not None:
        lines.append(f"time: about {plan['predicted_seconds']:.1f} s")
    for problem in plan.get("problems", []):
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def merged_text(merged: Mapping[str, Any]) -> str:
    """A merge's summary (``merge --json``'s second document)."""
    lines = [
        f"wrote {merged.get('output')} ({merged.get('arch')}, "
        f"{human_bytes(merged.get('bytes'))}): {merged.get('tensors')} tensors, "
        f"{merged.get('merged')} merged in {merged.get('seconds', 0):.1f} s"
    ]
    for key, what in (("copied", "copied as is"), ("skipped", "left out")):
        if merged.get(key):
            lines.append(f"{len(merged[key])} keys {what}")
    if merged.get("coefficients"):
        lines.append("coefficients (per block where they vary):")
        lines.extend("  " + line for line in str(merged["coefficients"]).splitlines())
    return "\n".join(lines)


def _short(value: Any, limit: int = 160) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dtypes(counts: Mapping[str, int]) -> str:
    return " ".join(f"{dtype} x{n}" for dtype, n in counts.items())


def inspect_text(doc: Mapping[str, Any]) -> str:
    """An ``inspect`` document: a checkpoint's size, architecture, variant, components,
    dtypes and metadata, or a LoRA's network, ranks and blocks."""
    if doc.get("command") == "inspect-lora":
        return _inspect_lora_text(doc)
    arch = doc.get("arch") or {}
    lines = [
        f"file:          {doc.get('path')}",
        f"size:          {human_bytes(doc.get('file_bytes'))} ({doc.get('tensors')} tensors, "
        f"{human_count(doc.get('params'))} parameters, "
        f"header {human_bytes(doc.get('header_bytes'))})",
        f"architecture:  {arch.get('summary', arch.get('label', 'unknown'))}",
    ]
    for variant in doc.get("variants", []):
        lines.append(f"variant:       {variant}")
    lines.append("components:")
    for comp in doc.get("components", []):
        lines.append(
            f"  {comp.get('component')} ({comp.get('label')}): {comp.get('tensors')} tensors, "
            f"{human_count(comp.get('params'))} params, {human_bytes(comp.get('bytes'))}, "
            f"{_dtypes(comp.get('dtypes', {}))}"
        )
    for key, what in (
        ("unknown_keys", "keys the catalog does not expect"),
        ("missing_keys", "expected keys missing"),
        ("shape_mismatches", "keys with an unexpected shape"),
    ):
        if doc.get(key):
            lines.append(f"{len(doc[key])} {what}")
    metadata = doc.get("metadata", [])
    if metadata:
        lines.append(f"metadata ({len(metadata)} keys):")
        lines.extend(f"  {m.get('key')}: {_short(m.get('value'))}" for m in metadata)
    return "\n".join(lines)


def _inspect_lora_text(doc: Mapping[str, Any]) -> str:
    lines = [
        f"{doc.get('file')} ({human_bytes(doc.get('bytes'))}): a {doc.get('network')} file "
        f"for {doc.get('arch')}, {len(doc.get('modules') or [])} modules"
    ]
    for key in ("ranks", "alphas"):
        pairs = _pairs(doc.get(key))
        if pairs:
            lines.append(f"{key[:-1]}: " + ", ".join(f"{_number(v)} ({int(n)})" for v, n in pairs))
    return "\n".join(lines)


def _pairs(value: Any) -> List[tuple]:
    """``[[value, count], ...]`` as tuples (a NumPy array or nested lists)."""
    if value is None:
        return []
    return [tuple(row) for row in (value.tolist() if hasattr(value, "tolist") else value)]


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def validate_text(doc: Mapping[str, Any]) -> str:
    """A ``validate`` document: per file its architecture and every finding with its
    severity (``error``, ``warning``, ``info``) and, where one exists, the fix."""
    lines: List[str] = []
    for file in doc.get("files", []):
        lines.append(str(file.get("path")))
        lines.append(f"  {file.get('arch')}")
        findings: Iterable[Mapping[str, Any]] = file.get("findings", [])
        for finding in findings:
            lines.append(f"  {finding.get('severity')}: {finding.get('message')}")
            if finding.get("fix"):
                lines.append(f"    to fix: ckpt-diff {finding['fix']}")
        if not file.get("findings"):
            lines.append("  no findings")
    return "\n".join(lines)


def lora_text(doc: Mapping[str, Any]) -> str:
    """A ``lora extract`` document: what was written, then per block the modules, the
    share of ‖ΔW‖² kept and ‖ΔW‖ (the square root of the block's ``energy``, ‖ΔW‖²)."""
    blocks = doc.get("blocks", [])
    lines = [
        f"{doc.get('output')}: {len(doc.get('modules', []))} modules of {doc.get('arch')} "
        f"({human_bytes(doc.get('bytes'))}) in {doc.get('seconds', 0):.1f} s"
    ]
    width = max([len("block")] + [len(str(b.get("block"))) for b in blocks])
    lines.append(f"{'block':<{width}}  {'modules':>7}  {'energy kept':>11}  {'‖ΔW‖':>8}")
    for b in blocks:
        lines.append(
            f"{b.get('block'):<{width}}  {b.get('modules'):>7}  "
            f"{b.get('share', 0) * 100:>10.2f}%  {math.sqrt(b.get('energy', 0)):>8.4f}"
        )
    for key, what in (
        ("below_min_diff", "modules below --min-diff, not extracted"),
        ("text_encoders_skipped", "text encoders unchanged, not extracted"),
        ("skipped", "modules skipped"),
    ):
        if doc.get(key):
            lines.append(f"{len(doc[key])} {what}")
    return "\n".join(lines)
