#!/usr/bin/env python3
"""Derives the layouts the shared facts do not list from those they do, by the rules the
models' own code states, and writes them next to the copied ones in crates/ckpt-core/src/catalog/data/.

Inputs (../shared/archs/, from sd-mecha 1.1.8's model configs):
  flux-dev.tsv, sd3-medium.tsv   key, shape, dtype, component, aliases

Outputs (crates/ckpt-core/src/catalog/data/):
  flux-dev.tsv, sd3-medium.tsv   copies
  flux-chroma.tsv   Chroma: Flux.1 without the per-block modulation layers, time_in, vector_in,
                    guidance_in and the final adaLN, with `distilled_guidance_layer`
                    (Approximator(in 64, out 3072, hidden 5120, 5 layers): in_proj, layers.N
                    .{in_layer,out_layer}, norms.N.scale, out_proj) and no CLIP-L (Chroma
                    conditions on T5-XXL alone). Source: Chroma's model code (ComfyUI
                    comfy/ldm/chroma, Forge backend/nn/chroma.py).
  sd35-large.tsv    SD3.5 large: the MMDiT of SD3 medium at depth 38, hidden 64 x 38 = 2432
                    (qkv 3H, mlp 4H, adaLN 6H, pre-only and final adaLN 2H), with RMS q/k norms
                    (`attn.ln_q/ln_k.weight`, head dim 64) in every attention.
  sd35-medium.tsv   SD3.5 medium (MMDiT-X): depth 24, hidden 1536, q/k norms everywhere, a
                    second self-attention `x_block.attn2` in blocks 0..12 whose x_block adaLN
                    has 9H outputs, and pos_embed for a 384 x 384 patch grid.
                    Source for both: ComfyUI comfy/ldm/modules/diffusionmodules/mmdit.py
                    (SelfAttention, DismantledBlock: n_mods 9 with attn2, 6, or 2 pre-only),
                    comfy/model_detection.py (depth = x_embedder rows / 64,
                    x_block_self_attn_layers from attn2 keys, qk_norm from ln_q), the
                    diffusers configs (pos_embed_max_size 192 large, 384 medium).

Run from the project root: python3 scripts/derive-layouts.py
"""
import os
import re
import shutil

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "archs")
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "ckpt-core", "src", "catalog", "data")
PREFIX = "model.diffusion_model."


def read(name):
    rows = []
    for line in open(os.path.join(SHARED, name)):
        line = line.rstrip("\n")
        if line:
            key, shape, dtype, comp, alias = (line.split("\t") + [""] * 5)[:5]
            rows.append([key, shape, dtype, comp, alias])
    return rows


def write(name, rows):
    rows = sorted(rows, key=lambda r: r[0])
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys)), name
    with open(os.path.join(OUT, name), "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"{name}: {len(rows)} keys")


def diffuser(key, shape, dtype="bfloat16"):
    bare = key
    return [PREFIX + bare, ",".join(map(str, shape)), dtype, "diffuser", bare]


def chroma(flux):
    drop = re.compile(
        r"^model\.diffusion_model\.(double_blocks\.\d+\.(img|txt)_mod\.|single_blocks\.\d+\.modulation\."
        r"|time_in\.|vector_in\.|guidance_in\.|final_layer\.adaLN_modulation\.)"
    )
    rows = [r for r in flux if not drop.match(r[0]) and r[3] != "clip_l"]
    hidden, inner = 3072, 5120
    g = "distilled_guidance_layer."
    rows += [diffuser(g + "in_proj.weight", [inner, 64]), diffuser(g + "in_proj.bias", [inner])]
    for i in range(5):
        for layer in ("in_layer", "out_layer"):
            rows.append(diffuser(f"{g}layers.{i}.{layer}.weight", [inner, inner]))
            rows.append(diffuser(f"{g}layers.{i}.{layer}.bias", [inner]))
        rows.append(diffuser(f"{g}norms.{i}.scale", [inner]))
    rows += [diffuser(g + "out_proj.weight", [hidden, inner]), diffuser(g + "out_proj.bias", [hidden])]
    return rows


def mmdit(sd3, depth, hidden, attn2_blocks, patches):
    """The SD3 medium layout rebuilt for another depth and width."""
    h0 = 1536
    block = re.compile(r"^model\.diffusion_model\.joint_blocks\.(\d+)\.(.*)$")
    dtype = next(r[2] for r in sd3 if r[3] == "diffuser")
    normal = {}  # suffix -> shape in a block that is not the last
    last = {}  # suffix -> shape in the last block (pre-only context)
    rows = []
    for key, shape, dt, comp, alias in sd3:
        m = block.match(key)
        if m:
            (last if m.group(1) == "23" else normal if m.group(1) == "0" else {})[m.group(2)] = shape
            continue
        if comp != "diffuser":
            rows.append([key, shape, dt, comp, alias])
            continue
        dims = [int(d) for d in shape.split(",")] if shape else []
        if key.endswith("pos_embed"):
            dims = [1, patches, hidden]
        else:
            dims = [scale(d, h0, hidden) for d in dims]
        rows.append([key, ",".join(map(str, dims)), dt, comp, alias])

    def widen(shape):
        return ",".join(str(scale(int(d), h0, hidden)) for d in shape.split(","))

    for n in range(depth):
        suffixes = last if n == depth - 1 else normal
        for suffix, shape in suffixes.items():
            shape = widen(shape)
            if n in attn2_blocks and suffix.startswith("x_block.adaLN_modulation.1."):
                first, *rest = shape.split(",")
                shape = ",".join([str(9 * hidden)] + rest)
            rows.append([f"{PREFIX}joint_blocks.{n}.{suffix}", shape, dtype, "diffuser", ""])
        for side in ("x_block", "context_block"):
            for norm in ("ln_q", "ln_k"):
                rows.append([f"{PREFIX}joint_blocks.{n}.{side}.attn.{norm}.weight", "64", dtype, "diffuser", ""])
        if n in attn2_blocks:
            a = f"{PREFIX}joint_blocks.{n}.x_block.attn2."
            rows += [
                [a + "qkv.weight", f"{3 * hidden},{hidden}", dtype, "diffuser", ""],
                [a + "qkv.bias", f"{3 * hidden}", dtype, "diffuser", ""],
                [a + "proj.weight", f"{hidden},{hidden}", dtype, "diffuser", ""],
                [a + "proj.bias", f"{hidden}", dtype, "diffuser", ""],
                [a + "ln_q.weight", "64", dtype, "diffuser", ""],
                [a + "ln_k.weight", "64", dtype, "diffuser", ""],
            ]
    return rows


def scale(d, h0, h):
    """A dimension of SD3 medium's MMDiT in a model of hidden size h: multiples of the
    hidden size (qkv 3H, mlp 4H, adaLN 6H or 2H) scale with it; the rest do not."""
    if d % h0 == 0 and d // h0 in (1, 2, 3, 4, 6):
        return d // h0 * h
    return d


def main():
    os.makedirs(OUT, exist_ok=True)
    for name in ("flux-dev.tsv", "sd3-medium.tsv"):
        shutil.copy(os.path.join(SHARED, name), os.path.join(OUT, name))
    flux, sd3 = read("flux-dev.tsv"), read("sd3-medium.tsv")
    write("flux-chroma.tsv", chroma(flux))
    write("sd35-large.tsv", mmdit(sd3, 38, 64 * 38, set(), 192 * 192))
    write("sd35-medium.tsv", mmdit(sd3, 24, 1536, set(range(13)), 384 * 384))


if __name__ == "__main__":
    main()
