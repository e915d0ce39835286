#!/usr/bin/env python3
"""The peer of `ckpt-diff convert --quant` and of `sim` on a GGUF file: gguf-py 0.19.0 (llama.cpp's
own Python package) doing the same work, as a user would in Python.

    python benches/peers/gguf_py_peer.py convert SRC.safetensors OUT.gguf Q8_0
    python benches/peers/gguf_py_peer.py sim MODEL.gguf SRC.safetensors

`convert` writes the diffusion model of a Flux.1 safetensors file (BFL's bare keys) as
ckpt-diff's writer does (city96's rules, crates/ckpt-ops/src/gguf/plan.rs): tensors in name
order; a tensor is quantized when its name ends in `weight`, it is 2-D as ggml counts dims,
its name does not contain `_norm.weight` or one of Flux's kept prefixes (lcpp.patch), and its
rows are whole blocks (else F16); the others are BF16 from a BF16 source, F32 when 1-D or at
most 1024 elements. Values go through `gguf.quants.quantize`; the file is written with
`gguf.GGUFWriter` tensor by tensor (header first, then `write_tensor_data`: one tensor in
memory at a time), then fsync'd. Of the types ckpt-diff writes, gguf-py 0.19.0 quantizes F16, BF16,
Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1: it has no quantizer for the K types (Q2_K..Q6_K only
dequantize), so this peer cannot write Q4_K_M.

`sim` reads the GGUF with `gguf.GGUFReader` (memory-mapped), decodes every tensor with
`gguf.quants.dequantize` and sums a.a, a.b, b.b in float64 against the source per Flux block
(IN, D00..D18, S00..S37, OUT, as ckpt-diff names them). Prints one JSON line: the overall
cosine, each block's, and the number of tensors decoded.

Needs gguf==0.19.0, numpy, torch and safetensors (target/golden-venv has them).
"""
import json
import os
import re
import sys

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from safetensors import safe_open

KEEP = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
FTYPE = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "F16": 1, "BF16": 32}


def ggml_n_dims(shape):
    for i, d in enumerate(shape):
        if d != 1:
            return max(len(shape) - i, 1)
    return 1


def plan_type(name, shape, src_dtype, qtype):
    n = int(np.prod(shape)) if shape else 1
    plain = T.BF16 if src_dtype == "BF16" else T.F16
    if src_dtype in ("BF16", "F32") and (len(shape) <= 1 or n <= 1024):
        plain = T.F32
    quantizable = (
        name.endswith("weight")
        and ggml_n_dims(shape) == 2
        and "_norm.weight" not in name
        and not any(k in name for k in KEEP)
    )
    if not quantizable:
        return plain
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else T.F16


def convert(src, out, qname):
    qtype = T[qname]
    with safe_open(src, "pt") as f:
        header_dtypes = json_header_dtypes(src)
        names = sorted(k for k in f.keys())
        w = gguf.GGUFWriter(out, "flux")
        w.add_quantization_version(2)
        w.add_file_type(FTYPE[qname])
        plan = []
        for name in names:
            shape = tuple(f.get_slice(name).get_shape())
            t = plan_type(name, shape, header_dtypes[name], qtype)
            if t == T.F32:
                w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
            else:
                bshape = gguf.quant_shape_to_byte_shape(shape, t)
                w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=t)
            plan.append((name, t))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        counts = {}
        for name, t in plan:
            x = f.get_tensor(name).float().numpy()
            data = x if t == T.F32 else gguf.quants.quantize(x, t)
            w.write_tensor_data(data)
            counts[t.name] = counts.get(t.name, 0) + 1
            del x, data
        w.close()
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    print(json.dumps({"tensors": counts}))


def json_header_dtypes(path):
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        h = json.loads(fh.read(n))
    return {k: v["dtype"] for k, v in h.items() if k != "__metadata__"}


BLOCK = re.compile(r"^(double|single)_blocks\.(\d+)\.")


def block_of(name):
    m = BLOCK.match(name)
    if m:
        return ("D" if m.group(1) == "double" else "S") + f"{int(m.group(2)):02d}"
    return "OUT" if name.startswith("final_layer.") else "IN"


def sim(model, src):
    r = gguf.GGUFReader(model)
    sums = {}
    decoded = 0
    with safe_open(src, "pt") as f:
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
            b = f.get_tensor(t.name).double().numpy().ravel()
            s = sums.setdefault(block_of(t.name), [0.0, 0.0, 0.0])
            s[0] += float(a @ a)
            s[1] += float(a @ b)
            s[2] += float(b @ b)
            decoded += 1
            del a, b
    cos = lambda s: s[1] / (s[0] * s[2]) ** 0.5
    total = [sum(s[i] for s in sums.values()) for i in range(3)]
    print(
        json.dumps(
            {
                "cosine": cos(total),
                "blocks": {k: cos(v) for k, v in sorted(sums.items())},
                "tensors": decoded,
            }
        )
    )


def main():
    torch.set_num_threads(os.cpu_count() or 1)
    if sys.argv[1] == "convert":
        convert(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "sim":
        sim(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
