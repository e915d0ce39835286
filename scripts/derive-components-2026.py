#!/usr/bin/env python3
"""Derives the layouts of the 2026 models' text encoders and VAEs from ComfyUI's own model
classes, and writes them to crates/ckpt-core/src/catalog/data/ (the shared facts list the
diffusion models only: ../shared/archs/README.models-2026.md).

What it runs: ComfyUI's classes, built on PyTorch's `meta` device (shapes, no weights), and
their `state_dict()` names and shapes. Those are the names ComfyUI loads a component file
by, and saves an all-in-one checkpoint with (under `text_encoders.<name>.transformer.` and
`vae.`):

  qwen3-4b.tsv       comfy.text_encoders.llama.Qwen3_4B        (Z-Image, FLUX.2 klein 4B)
  qwen3-8b.tsv       comfy.text_encoders.llama.Qwen3_8B        (FLUX.2 klein 9B; with lm_head)
  qwen25-vl-7b.tsv   comfy.text_encoders.llama.Qwen25_7BVLI    (Qwen-Image; with the vision
                     tower `visual.`, which the Edit models use)
  mistral3-24b.tsv   comfy.text_encoders.llama.Mistral3Small24B (FLUX.2 dev; 40 layers; ComfyUI
                     also loads a "pruned" file of 30, so layers 30-39 are optional)
  flux2-ae.tsv       comfy.ldm.models.autoencoder.AutoencoderKL as comfy/sd.py builds it for a
                     VAE with `bn.running_mean` (FLUX.2 AE: ch 128, ch_mult [1,2,4,4],
                     z_channels 32, batch-norm over the 2x2-packed latent)
  qwen-image-vae.tsv comfy.ldm.wan.vae.WanVAE as comfy/sd.py builds the Wan 2.1 VAE (dim 96,
                     z_dim 16, 3 image channels): Qwen-Image's VAE
  flux1-ae.tsv       the Flux.1 AE rows of flux-dev.tsv (sd-mecha's), without their `vae.`
                     prefix (Z-Image decodes with it)

Configs are ComfyUI's dataclasses (comfy/text_encoders/llama.py) and the ddconfigs of
comfy/sd.py `VAE.__init__`. ComfyUI keeps an output head as `model.lm_head.weight` (and
renames a file's `lm_head.weight` to it, comfy/sd.py `load_text_encoder_state_dicts`). Which
head a released file has beyond ComfyUI's class is not known here: one is listed, optional,
for the encoders whose class has none (Qwen2.5-VL-7B and Mistral-3 24B are untied: the
transformers files carry one).

ComfyUI used: Comfy-Org/ComfyUI 4f874c5e (0.29.0), via the fork silveroxides/ComfyUI (the
same commit as fixtures/comfy-quant/comfyui_load.py); torch 2.15.0 CPU.

Run from the project root:
    target/cui-venv/bin/python scripts/derive-components-2026.py --comfyui target/ComfyUI
(the environment of fixtures/comfy-quant/comfyui_load.py).

Format of the output: the shared facts' (a header, then `key, [shape], dtype, component,
block`), keys as ComfyUI's state dict names them, dtype that of the released files (BF16;
the Flux.1 AE's rows keep sd-mecha's F32), component the id in components.toml, block the
top-level module (`layers.7`, `visual.blocks.3`, `decoder.up.2`, ...).
"""
import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "ckpt-core" / "src" / "catalog" / "data"
HEADER = "key\tshape\tdtype\tcomponent\tblock\n"


def block_of(key):
    m = re.match(r"^((?:model\.)?layers\.\d+|visual\.blocks\.\d+|(?:en|de)coder\.(?:down|up|mid|downsamples|upsamples|middle)(?:\.\d+)?)\.", key)
    if m:
        return m.group(1)
    parts = key.split(".")
    return ".".join(parts[:-1]) if len(parts) > 1 else parts[0]


def write(name, component, rows, dtype="BF16"):
    path = OUT / name
    with open(path, "w") as f:
        f.write(HEADER)
        for key, shape, *kind in rows:
            shape_s = "[" + ", ".join(str(d) for d in shape) + "]"
            d = kind[0] if kind else dtype
            f.write(f"{key}\t{shape_s}\t{d}\t{component}\t{block_of(key)}\n")
    n = sum(1 for _ in rows)
    params = sum(math.prod(r[1]) for r in rows)
    print(f"{path.relative_to(ROOT)}: {n} tensors, {params:,} parameters")


def rows_of(module):
    """(name, shape) of each float tensor; (name, shape, dtype) of the others (a batch
    norm's step counter is an int64)."""
    rows = []
    for k, v in module.state_dict().items():
        if v.dtype.is_floating_point:
            rows.append((k, tuple(v.shape)))
        else:
            rows.append((k, tuple(v.shape), {"torch.int64": "I64"}[str(v.dtype)]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True, help="a ComfyUI checkout at 4f874c5e")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.comfyui).resolve()))
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    import comfy.ops
    import comfy.text_encoders.llama as llama
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.wan.vae import WanVAE

    ops = comfy.ops.disable_weight_init
    meta = torch.device("meta")
    for cls, name, component in [
        (llama.Qwen3_4B, "qwen3-4b.tsv", "qwen3_4b"),
        (llama.Qwen3_8B, "qwen3-8b.tsv", "qwen3_8b"),
        (llama.Qwen25_7BVLI, "qwen25-vl-7b.tsv", "qwen25_7b"),
        (llama.Mistral3Small24B, "mistral3-24b.tsv", "mistral3_24b"),
    ]:
        with torch.device(meta):
            m = cls({}, torch.bfloat16, meta, ops)
        rows = rows_of(m)
        if component in ("qwen25_7b", "mistral3_24b"):
            vocab, hidden = next(r[1] for r in rows if r[0] == "model.embed_tokens.weight")
            rows.append(("model.lm_head.weight", (vocab, hidden)))
        write(name, component, rows)

    # comfy/sd.py: the default ddconfig, z_channels from decoder.conv_in, batch_norm_latent
    # when bn.running_mean is there, embed_dim from post_quant_conv.
    ddconfig = {
        "double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
        "dropout": 0.0, "batch_norm_latent": True,
    }
    with torch.device(meta):
        ae = AutoencoderKL(ddconfig=ddconfig, embed_dim=32)
    write("flux2-ae.tsv", "vae", rows_of(ae))

    with torch.device(meta):
        wan = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True], image_channels=3,
                     conv_out_channels=3, dropout=0.0)
    write("qwen-image-vae.tsv", "vae", rows_of(wan))

    flux1 = []
    for line in open(OUT / "flux-dev.tsv"):
        key, shape, dtype, component = line.rstrip("\n").split("\t")[:4]
        if component == "vae":
            dims = tuple(int(d) for d in shape.split(",") if d)
            flux1.append((key.removeprefix("vae."), dims))
    write("flux1-ae.tsv", "vae", sorted(flux1), dtype="F32")


if __name__ == "__main__":
    main()
