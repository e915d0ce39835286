"""The merges of the peer benchmark, done by sd-mecha (its Python API; 1.x has no CLI).

    python merge_mecha.py ws  OUT A B          A x 0.7 + B x 0.3
    python merge_mecha.py ad  OUT A B C        A + (B - C) x 0.5
    python merge_mecha.py recipe3 OUT A B C    S1 = A x 0.6 + B x 0.4; S2 = S1 + (C - A) x 0.5;
                                               OUT = S2 x 0.7 + B x 0.3

sd-mecha's defaults otherwise: float32 arithmetic, float16 output, its own thread count.
"""

import sys

import sd_mecha
import torch
from sd_mecha.extensions.builtin.merge_methods import linear


def main():
    kind, out, *paths = sys.argv[1:]
    models = [sd_mecha.model(p) for p in paths]
    if kind == "ws":
        recipe = sd_mecha.weighted_sum(models[0], models[1], alpha=0.3)
    elif kind == "ad":
        recipe = sd_mecha.add_difference(models[0], models[1], models[2], alpha=0.5)
    elif kind == "recipe3":
        a, b, c = models
        s1 = sd_mecha.weighted_sum(a, b, alpha=0.4)
        # The public add_difference(a, b, c) wrapper fails in 1.1.8 when `a` is itself a
        # merge (it compares a merge space that is not known yet), so the two methods it
        # wraps are called directly.
        s2 = linear.add_difference(s1, linear.subtract(c, a), alpha=0.5)
        recipe = sd_mecha.weighted_sum(s2, b, alpha=0.3)
    else:
        raise SystemExit(f"unknown merge {kind}")
    sd_mecha.merge(recipe, output=out, merge_dtype=torch.float32, output_dtype=torch.float16)


if __name__ == "__main__":
    main()
