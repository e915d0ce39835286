#!/usr/bin/env bash
# Creates the virtual environment of the Python peers: setup.sh VENV
set -euo pipefail
venv=$1
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# The CPU build (200 MB) when PyTorch's index is reachable; PyPI's (with CUDA libraries) otherwise.
"$venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch==2.5.1 \
    || "$venv/bin/pip" install -q torch==2.5.1
"$venv/bin/pip" install -q -r "$here/requirements.txt"
# torchvision matching torch, from the same index (sd-scripts' library imports it).
"$venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torchvision==0.20.1 \
    || "$venv/bin/pip" install -q torchvision==0.20.1
# kohya's sd-scripts for the LoRA extraction peer, next to the venv (target/sd-scripts).
scripts="$(dirname "$venv")/sd-scripts"
if [ ! -d "$scripts" ]; then
    git clone -q --depth 1 https://github.com/kohya-ss/sd-scripts "$scripts" \
        || echo "sd-scripts: not cloned (no network); bench lora_full runs without kohya's script"
fi
# musubi-tuner for the Qwen-Image LoRA extraction peer (qwen_extract_lora.py, bench lora_full).
musubi="$(dirname "$venv")/musubi-tuner"
if [ ! -d "$musubi" ]; then
    git clone -q --depth 1 https://github.com/kohya-ss/musubi-tuner "$musubi" \
        || echo "musubi-tuner: not cloned (no network); bench lora_full runs without its script"
fi
"$venv/bin/python" -c "import torch, sd_mecha, blake3, safetensors; print('peers:', 'torch', torch.__version__, 'sd-mecha', sd_mecha.__version__ if hasattr(sd_mecha, '__version__') else '1.1.8')"
