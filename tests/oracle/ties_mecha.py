"""sd-mecha 1.1.8's TIES on generated checkpoints: the golden of `ties(..., like=sd-mecha)`.

    python ties_mecha.py OUT BASE MODEL... [--k K] [--vote count|magnitude]
                         [--combine mean|stock|median] [--alpha A] [--eps E] [--maxiter N]
                         [--ftol F] [--cos-eps C] [--keys K1,K2,...]

For each float tensor: the deltas MODEL - BASE in float64 (`--merge-dtype`; AstolfoMix-XL
merged in FP64; float32 is sd-mecha's default and its Weiszfeld then differs from an exact
median by about 1e-5 of the delta),
sd-mecha's own `ties_sum_extended` on them, then BASE + alpha * result, stored in the
inputs' dtype. This is sd-mecha's `add_difference_ties_extended` without its recipe
plumbing (model configs would reject the reduced widths the tests use); the TIES part is
sd-mecha's function itself, called through `__wrapped__`.

sd-mecha's switches, as its source reads: `vote_sgn` True elects the sign from the sum of
the deltas (magnitude), False from the sum of their signs (count); `apply_median` takes the
geometric median; otherwise `apply_stock` True gives the plain disjoint mean and False
multiplies it by Model Stock's t (the inversion the module notes of ckpt-diff describe).
"""

import argparse

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sd_mecha.extensions.builtin.merge_methods.ties import ties_sum_extended


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("base")
    p.add_argument("models", nargs="+")
    p.add_argument("--k", type=float, default=1.0)
    p.add_argument("--vote", choices=["count", "magnitude"], default="magnitude")
    p.add_argument("--combine", choices=["mean", "stock", "median"], default="mean")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--maxiter", type=int, default=100)
    p.add_argument("--ftol", type=float, default=1e-20)
    p.add_argument("--cos-eps", type=float, default=1e-6)
    p.add_argument("--keys", default="")
    p.add_argument("--merge-dtype", choices=["float32", "float64"], default="float64")
    a = p.parse_args()
    wanted = set(k for k in a.keys.split(",") if k)
    torch.set_num_threads(1)  # Deterministic reductions; the tests are small.

    base = safe_open(a.base, "pt")
    models = [safe_open(m, "pt") for m in a.models]
    out = {}
    for key in base.keys():
        if wanted and key not in wanted:
            continue
        b = base.get_tensor(key)
        if not b.is_floating_point():
            continue
        dt = getattr(torch, a.merge_dtype)
        deltas = [m.get_tensor(key).to(dt) - b.to(dt) for m in models]
        res = ties_sum_extended.__wrapped__(
            *deltas,
            k=a.k,
            vote_sgn=a.vote == "magnitude",
            apply_stock=a.combine == "mean",
            apply_median=a.combine == "median",
            cos_eps=a.cos_eps,
            eps=a.eps,
            maxiter=a.maxiter,
            ftol=a.ftol,
        )
        out[key] = (b.to(dt) + a.alpha * res).to(b.dtype).contiguous()
    save_file(out, a.out)


if __name__ == "__main__":
    main()
