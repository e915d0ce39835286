#!/usr/bin/env bash
# The Python package's tests (docs/python.md): maturin builds the wheel (the test profile's
# code, sharing cargo's compiled dependencies; a release wheel is the same code optimised), a
# fresh virtual environment installs it, and pytest checks the module against the binary
# cargo built (target/debug/ckpt-diff, built here if missing) and the ComfyUI nodes against
# their stand-in. `.ci/run` runs it after the Rust tests; `just test-python` alone.
#
# PIP_VENV: a virtual environment to install maturin into (default target/ci-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${PIP_VENV:-target/ci-venv}
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
test -x "$tools/bin/maturin" || "$tools/bin/pip" install --quiet maturin
cargo build --locked --quiet
rm -rf target/wheels target/py-venv
"$tools/bin/maturin" build --locked --profile dev --out target/wheels --quiet
python3 -m venv target/py-venv
target/py-venv/bin/pip install --quiet target/wheels/ckpt_diff-*.whl pytest numpy pillow matplotlib
CKPT_DIFF_BIN="$PWD/target/debug/ckpt-diff" target/py-venv/bin/python -m pytest -q \
    python/tests integrations/comfyui/tests
