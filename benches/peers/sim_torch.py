"""Per-block cosine similarity of two checkpoints, as people write it in a notebook with
PyTorch: load both files, then for every key accumulate <a,b>, |a|^2, |b|^2 into the key's
block (SuperMerger's block rules: time/label embeddings in IN00, `out.` in the last OUT, text
encoders TE1/TE2, VAE), and print {block: cosine} as JSON.

    python sim_torch.py A B
"""

import json
import math
import re
import sys

import torch
from safetensors.torch import load_file

BLOCK = re.compile(r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")


def row_of(key, last_out):
    if key.startswith("model.diffusion_model."):
        rest = key[len("model.diffusion_model."):]
        if rest.startswith(("time_embed.", "label_emb.")):
            return "IN00"
        if rest.startswith("out."):
            return f"OUT{last_out:02d}"
        m = BLOCK.match(key)
        kind, n = m.group(1), int(m.group(2))
        if kind == "middle_block":
            return "M00"
        return f"{'IN' if kind == 'input_blocks' else 'OUT'}{n:02d}"
    if key.startswith(("cond_stage_model.", "conditioner.embedders.0.")):
        return "TE1"
    if key.startswith("conditioner.embedders.1."):
        return "TE2"
    if key.startswith("first_stage_model."):
        return "VAE"
    return "OTHER"


def main():
    a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
    last_out = 11 if any(k.startswith("model.diffusion_model.output_blocks.11.") for k in a) else 8
    sums = {}
    with torch.no_grad():
        for key, x in a.items():
            y = b.get(key)
            if y is None or not x.is_floating_point() or x.shape != y.shape:
                continue
            x, y = x.float().flatten(), y.float().flatten()
            s = sums.setdefault(row_of(key, last_out), [0.0, 0.0, 0.0])
            s[0] += torch.dot(x, y).item()
            s[1] += torch.dot(x, x).item()
            s[2] += torch.dot(y, y).item()
    print(json.dumps({row: ab / math.sqrt(aa * bb) for row, (ab, aa, bb) in sums.items()}))


if __name__ == "__main__":
    main()
