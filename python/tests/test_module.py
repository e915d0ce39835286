"""The module against the command line: every function returns the fields ``--json``
prints on the same files, failures raise the classes of ckpt_diff.errors with the command
line's message, a merge written from Python is the CLI's byte for byte, and Ctrl-C or an
exception from the progress callback stops a pass without leaving an output."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckpt_diff
from ckpt_diff.errors import BadInputError, CkptDiffError, CkptIOError, RefusedFormatError
from cli_oracle import cli, cli_json

# Fields that differ from run to run (times, free disk, rates learned by the cache).
VOLATILE = {"seconds", "free_bytes", "predicted_seconds", "rate"}


def plain(value):
    """``value`` with arrays as lists and the volatile fields left out, to compare."""
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, float) and value != value:
        return None  # nan: JSON's null
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same(module_doc, cli_doc):
    assert plain(module_doc) == plain(cli_doc)


# --- every function against the command line -------------------------------------------


def test_inspect_one_and_several(family):
    base, ft1 = family / "base.safetensors", family / "ft1.safetensors"
    one = ckpt_diff.inspect(base)
    assert one["command"] == "inspect"
    same(one, cli_json("inspect", base))
    same(ckpt_diff.inspect(base, ft1), cli_json("inspect", base, ft1))


def test_sim_rows_equal_the_cli(family):
    a, b = family / "base.safetensors", family / "ft1.safetensors"
    r = ckpt_diff.sim(a, b)
    same(r, cli_json("sim", a, b))
    assert r["rows"] and all(0.9 < row["similarity"] <= 1.0 for row in r["rows"])
    out = ckpt_diff.sim(a, b, blocks=["OUT03..OUT05", "te"], per_tensor=True)
    same(out, cli_json("sim", a, b, "--blocks", "OUT03..OUT05,te", "--per-tensor"))
    assert [row["label"] for row in out["rows"]][:3] == ["OUT03", "OUT04", "OUT05"]


def test_sim_asim_equals_the_cli(family):
    a, b = family / "base.safetensors", family / "ft1.safetensors"
    r = ckpt_diff.sim(a, b, blocks="OUT09,OUT10", metric="asim", seed=7)
    same(r, cli_json("sim", a, b, "--metric", "asim", "--blocks", "OUT09,OUT10",
                     "--seed", "7"))


def test_l2_matrices_are_arrays_equal_to_the_cli(family):
    base = family / "base.safetensors"
    models = [family / "ft1.safetensors", family / "ft2.safetensors",
              family / "ws-ft1-ft2.safetensors"]
    r = ckpt_diff.l2(base, models)
    doc = cli_json("l2", "--base", base, *models)
    same(r, doc)
    assert isinstance(r["from_base"], np.ndarray)
    assert r["from_base"].shape == (3, len(doc["rows"]))
    assert isinstance(r["scopes"][0]["distance"], np.ndarray)
    assert r["scopes"][0]["distance"].shape == (4, 4)  # the base and three models
    # The matrix is the one the command printed, value for value.
    assert r["from_base"][1].tolist() == doc["from_base"][1]
    assert r["row_delta_cosine"].shape == (len(doc["rows"]), 3, 3)
    assert r["scopes"][0]["mds"]["coords"].shape == (4, 2)


def test_without_numpy_matrices_are_lists(family, monkeypatch):
    monkeypatch.setattr(ckpt_diff, "_numpy", lambda: None)
    base = family / "base.safetensors"
    r = ckpt_diff.l2(base, [family / "ft1.safetensors"])
    assert isinstance(r["from_base"], list) and isinstance(r["from_base"][0], list)


def test_hash_equals_the_cli(family):
    base = family / "base.safetensors"
    same(ckpt_diff.hash(base), cli_json("hash", base))
    h = ckpt_diff.hash(base, components=True)
    same(h, cli_json("hash", base, "--components"))


def test_validate_is_data_not_an_exception(family, tmp_path):
    base = family / "base.safetensors"
    same(ckpt_diff.validate(base), cli_json("validate", base))
    # A file with warnings: the command exits 1, the function returns the findings.
    heavy = tmp_path / "heavy.safetensors"
    cli("synth", "model", heavy, "--arch", "sd1", "--scale", "16", "--ema", "-q")
    assert cli("validate", heavy).returncode == 1
    v = ckpt_diff.validate(heavy)
    same(v, cli_json("validate", heavy))
    assert any(f["severity"] == "warning" for f in v["files"][0]["findings"])


def test_merge_equals_the_cli_byte_for_byte(family, tmp_path):
    recipe = "A = ft1.safetensors\nB = ft2.safetensors\nOUT = A x (1-alpha) + B x alpha\n" \
             "    alpha = {OUT06..OUT11: 0.3, BASE: 0.5}\n"
    # The recipe as text, its paths from the family's folder.
    (tmp_path / "py").mkdir()
    (tmp_path / "cli").mkdir()
    py_out, cli_out = tmp_path / "py" / "m.safetensors", tmp_path / "cli" / "m.safetensors"
    r = ckpt_diff.merge(recipe, py_out, dtype="f16", paths_from=family)
    doc = cli_json("merge", "--text", recipe, "--paths-from", family, "-o", cli_out,
                   "--dtype", "f16")
    assert py_out.read_bytes() == cli_out.read_bytes()
    assert r["merged"]["tensors"] == doc["tensors"] > 1000
    same({**r["merged"], "output": None, "plan": None}, {**doc, "output": None, "plan": None})
    assert r["plan"]["components"] == doc["plan"]["components"]
    # The same recipe as a file beside the models.
    (family / "mbw.recipe").write_text(recipe)
    ckpt_diff.merge(family / "mbw.recipe", tmp_path / "py" / "f.safetensors", dtype="f16")
    cli("merge", family / "mbw.recipe", "-o", tmp_path / "cli" / "f.safetensors", "--dtype", "f16")
    assert (tmp_path / "py" / "f.safetensors").read_bytes() == \
        (tmp_path / "cli" / "f.safetensors").read_bytes()


def test_merge_of_a_recipe_file_and_dry_run(family, tmp_path):
    recipe = tmp_path / "r.recipe"
    recipe.write_text(f'A = "{family / "ft1.safetensors"}"\nB = "{family / "ft2.safetensors"}"\n'
                      "OUT = A x 0.5 + B x 0.5\n")
    plan = ckpt_diff.merge(recipe, tmp_path / "x.safetensors", dry_run=True)
    assert plan["merged"] is None and not (tmp_path / "x.safetensors").exists()
    same(plan["plan"], cli_json("merge", recipe, "-o", tmp_path / "x.safetensors",
                                "--dry-run"))
    r = ckpt_diff.merge(str(recipe), tmp_path / "y.safetensors")
    assert (tmp_path / "y.safetensors").exists()
    assert r["merged"]["output"].endswith("y.safetensors") and r["merged"]["merged"] > 1000
    same(ckpt_diff.inspect(tmp_path / "y.safetensors"), cli_json("inspect", tmp_path / "y.safetensors"))


def test_lora_extract_equals_the_cli(family, tmp_path):
    tuned, base = family / "ft1.safetensors", family / "base.safetensors"
    (tmp_path / "py").mkdir()
    (tmp_path / "cli").mkdir()
    r = ckpt_diff.lora_extract(tuned, base, tmp_path / "py" / "l.safetensors", rank=8)
    doc = cli_json("lora", "extract", tuned, "--base", base, "-o",
                   tmp_path / "cli" / "l.safetensors", "--rank", "8")
    same({**r, "output": None}, {**doc, "output": None})
    assert (tmp_path / "py" / "l.safetensors").read_bytes() == \
        (tmp_path / "cli" / "l.safetensors").read_bytes()
    lora = ckpt_diff.inspect(tmp_path / "py" / "l.safetensors")
    assert lora["command"] == "inspect-lora"
    # Lists of [rank, count] pairs are not matrices: the counts stay integers.
    assert isinstance(lora["ranks"], list) and lora["ranks"][0][1] == int(lora["ranks"][0][1])
    assert isinstance(lora["ranks"][0][1], int)


def test_lineage_equals_the_cli(family, tmp_path):
    index = tmp_path / "index.sqlite"
    members = [family / n for n in ("base.safetensors", "ft1.safetensors", "ft2.safetensors")]
    ckpt_diff.run("index", "add", *members, "--index", index)
    target = family / "ws-ft1-ft2.safetensors"
    r = ckpt_diff.lineage(target, index=index, top=2)
    same(r, cli_json("lineage", target, "--index", index, "--top", "2"))


def test_run_takes_any_command(family):
    docs = ckpt_diff.run("sim", family / "base.safetensors", family / "ft1.safetensors",
                         "--blocks", "out")
    assert len(docs) == 1 and docs[0]["command"] == "sim"


def test_progress_reaches_the_callback(big_pair, tmp_path):
    seen = []
    a, b = big_pair
    ckpt_diff.merge(f'A = "{a}"\nB = "{b}"\nOUT = A x 0.5 + B x 0.5\n', tmp_path / "m.safetensors",
                    dtype="f32", progress=lambda what, done, total: seen.append((what, done, total)))
    assert seen, "the callback was never called"
    # Reports while the pass runs, every 50 ms: bytes done of the total, never past it.
    assert all(what == "merging" and 0 <= done <= total for what, done, total in seen)
    assert seen[0][2] > 200_000_000
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)


# --- errors -----------------------------------------------------------------------------


def test_a_missing_file_is_an_io_error_with_the_clis_message(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CkptIOError) as e:
        ckpt_diff.inspect(missing)
    p = cli("inspect", missing, check=False)
    assert p.returncode == 2
    assert f"ckpt-diff: error: {e.value}" in p.stderr
    assert isinstance(e.value, OSError) and isinstance(e.value, CkptDiffError)


def test_a_damaged_file_is_bad_input_with_a_hint(family, tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes((family / "base.safetensors").read_bytes()[:100_000])
    with pytest.raises(BadInputError) as e:
        ckpt_diff.sim(short, family / "base.safetensors")
    assert "short.safetensors" in str(e.value)
    assert e.value.hint and "again" in e.value.hint
    assert e.value.hint in cli("sim", short, family / "base.safetensors", check=False).stderr


def test_a_usage_error_is_bad_input(family):
    with pytest.raises(BadInputError) as e:
        ckpt_diff.sim(family / "base.safetensors", family / "ft1.safetensors", metric="bogus")
    assert "bogus" in str(e.value) and isinstance(e.value, ValueError)


def _safetensors(path: Path, tensors: dict) -> None:
    """Writes a safetensors file by hand (name -> (dtype, shape, bytes))."""
    import json
    import struct

    header, offset, data = {}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_a_refused_format_names_it(tmp_path):
    nf4 = tmp_path / "nf4.safetensors"
    _safetensors(nf4, {
        "w.weight": ("U8", [8, 1], bytes(8)),
        "w.weight.absmax": ("F32", [1], bytes(4)),
        "w.weight.quant_map": ("F32", [16], bytes(64)),
        "w.weight.quant_state.bitsandbytes__nf4": ("U8", [4], b"{}  "),
    })
    with pytest.raises(RefusedFormatError) as e:
        ckpt_diff.inspect(nf4)
    assert "bitsandbytes" in str(e.value)


def test_an_existing_output_needs_force(family, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(BadInputError) as e:
        ckpt_diff.merge(f'A = "{family / "ft1.safetensors"}"\nOUT = A x 1\n', out)
    assert "exists: pass --force to replace it" in str(e.value)
    assert out.read_bytes() == b"keep me"


# --- interruption and the GIL ------------------------------------------------------------


def _no_output(folder: Path, name: str):
    left = [p.name for p in folder.iterdir() if p.name.startswith(name) or "tmp" in p.name]
    assert left == [], f"left behind: {left}"


def test_ctrl_c_stops_a_merge_and_leaves_nothing(big_pair, tmp_path):
    out = tmp_path / "merged.safetensors"

    def interrupt(what, done, total):
        # The first progress report: the pass is running. Python runs the SIGINT handler
        # here, on this thread, as it would for a key press.
        if done < total:
            os.kill(os.getpid(), signal.SIGINT)

    a, b = big_pair
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ckpt_diff.merge(f'A = "{a}"\nB = "{b}"\nOUT = A x 0.5 + B x 0.5\n', out,
                        dtype="f32", progress=interrupt)
    assert time.monotonic() - started < 60
    _no_output(tmp_path, "merged")


def test_an_exception_in_the_callback_stops_the_pass(big_pair, tmp_path):
    out = tmp_path / "merged.safetensors"

    class Stop(Exception):
        pass

    def stop(what, done, total):
        if done < total:
            raise Stop()

    a, b = big_pair
    with pytest.raises(Stop):
        ckpt_diff.merge(f'A = "{a}"\nB = "{b}"\nOUT = A x 0.5 + B x 0.5\n', out,
                        dtype="f32", progress=stop)
    _no_output(tmp_path, "merged")


def test_the_gil_is_released_during_a_pass(big_pair):
    ticks = 0
    running = threading.Event()
    done = threading.Event()

    def count():
        nonlocal ticks
        running.set()
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    running.wait()
    before = ticks
    started = time.monotonic()
    ckpt_diff.hash(*big_pair)
    elapsed = time.monotonic() - started
    during = ticks - before
    done.set()
    t.join()
    # A thread held off by the GIL would count only in the switch intervals (5 ms).
    assert elapsed > 0.05 and during > 1000, (elapsed, during)


# --- the command the wheel installs --------------------------------------------------------


def installed_command() -> str:
    """The ``ckpt-diff`` the wheel put beside this interpreter (the venv's scripts)."""
    import sys

    folder = Path(sys.executable).parent
    exe = next((folder / n for n in ("ckpt-diff", "ckpt-diff.exe") if (folder / n).exists()),
               None)
    assert exe, f"the wheel installs ckpt-diff in {folder}"
    return str(exe)


def test_the_installed_command_is_the_command_line(family):
    import subprocess

    exe = installed_command()
    p = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("ckpt-diff ")
    p = subprocess.run([exe, "sim", family / "base.safetensors", family / "ft1.safetensors",
                        "--json"], capture_output=True, text=True)
    import json

    same(json.loads(p.stdout), cli_json("sim", family / "base.safetensors",
                                        family / "ft1.safetensors"))
    p = subprocess.run([exe, "sim", "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "--bogus" in p.stderr


def test_the_installed_command_stops_on_ctrl_c(big_pair, tmp_path):
    import subprocess

    a, b = big_pair
    out = tmp_path / "m.safetensors"
    p = subprocess.Popen([installed_command(), "merge", "ws", a, b, "--alpha", "0.5",
                          "--dtype", "f32", "-o", out], stderr=subprocess.PIPE, text=True)
    # The plan's last line comes just before the pass: interrupt then.
    err = ""
    for line in p.stderr:
        err += line
        if line.startswith("time:"):
            break
    p.send_signal(signal.SIGINT)
    rest, more = p.communicate(timeout=60)
    err += more
    if p.returncode == 0:
        pytest.skip("the merge finished before the signal")
    assert p.returncode == 130, err
    assert "interrupted" in err
    _no_output(tmp_path, "m.")
