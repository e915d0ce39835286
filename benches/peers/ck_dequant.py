#!/usr/bin/env python3
"""The peer of `sim` on a ComfyUI per-layer quantized file: comfy-kitchen 0.2.40's eager
(reference) dequantization of every quantized layer, as ComfyUI's `_load_quantized_module`
builds it, to float32, plus the same sums `sim` needs against the BF16 twin
(a.a, a.b, b.b in float64 per layer): what a user would run in Python to compare the two.

    python benches/peers/ck_dequant.py QUANTIZED.safetensors BF16.safetensors

Needs torch, safetensors and comfy-kitchen==0.2.40 (benches/peers/requirements.txt). Prints
the overall cosine similarity and the number of layers decoded.
"""
import json
import sys

import comfy_kitchen as ck
import torch
from comfy_kitchen.tensor import QuantizedTensor, get_layout_class
from safetensors import safe_open

LAYOUTS = {
    "float8_e4m3fn": ("TensorCoreFP8Layout", torch.float8_e4m3fn),
    "float8_e5m2": ("TensorCoreFP8Layout", torch.float8_e5m2),
    "nvfp4": ("TensorCoreNVFP4Layout", torch.uint8),
    "mxfp8": ("TensorCoreMXFP8Layout", torch.float8_e4m3fn),
    "int8_tensorwise": ("TensorWiseINT8Layout", torch.int8),
}


def main():
    qpath, bpath = sys.argv[1], sys.argv[2]
    aa = ab = bb = 0.0
    layers = 0
    with ck.registry.use_backend("eager"), safe_open(qpath, "pt") as q, safe_open(bpath, "pt") as b:
        keys = set(q.keys())
        bkeys = set(b.keys())

        def twin(key):
            # BFL's files name the diffuser's keys bare; ckpt-diff writes them prefixed.
            if key in bkeys:
                return b.get_tensor(key)
            return b.get_tensor(key.removeprefix("model.diffusion_model."))

        for key in q.keys():
            if key.endswith(".comfy_quant") or key.endswith(".weight_scale") or key.endswith(
                ".weight_scale_2"
            ) or key.endswith(".input_scale"):
                continue
            layer = key[: -len(".weight")] if key.endswith(".weight") else None
            if layer is not None and layer + ".comfy_quant" in keys:
                conf = json.loads(q.get_tensor(layer + ".comfy_quant").numpy().tobytes())
                layout, storage = LAYOUTS[conf["format"]]
                want = twin(key)
                scale = q.get_tensor(layer + ".weight_scale")
                if conf["format"] == "nvfp4":
                    kw = dict(
                        scale=q.get_tensor(layer + ".weight_scale_2"),
                        block_scale=scale.view(torch.float8_e4m3fn),
                    )
                elif conf["format"] == "mxfp8":
                    kw = dict(scale=scale.view(torch.float8_e8m0fnu))
                else:
                    kw = dict(scale=scale)
                params = get_layout_class(layout).Params(
                    **kw, orig_dtype=torch.float32, orig_shape=tuple(want.shape)
                )
                x = QuantizedTensor(q.get_tensor(key).to(storage), layout, params)
                a = x.dequantize().double()
                layers += 1
            else:
                a = q.get_tensor(key).double()
                want = twin(key)
            y = want.double()
            aa += float((a * a).sum())
            ab += float((a * y).sum())
            bb += float((y * y).sum())
    print(f"cosine {ab / (aa * bb) ** 0.5:.6f}; {layers} layers decoded")


if __name__ == "__main__":
    main()
