"""AstolfoMix-XL's TGMD done by sd-mecha 1.1.8, for benches/tgmd_full.rs.

    python tgmd_mecha.py recipe OUT BASE MODEL...   sd-mecha's own pipeline (sd_mecha.merge)
    python tgmd_mecha.py direct OUT BASE MODEL...   its merge function per key (any width)

The recipe is AstolfoMix-XL's x116a (24060702): deltas against the base,
ties_sum_with_dropout(probability=0.1, rescale=False, k=1.0, vote_sgn=True,
apply_median=True, eps=1e-6, maxiter=100, ftol=1e-20, seed=240603), added back with
alpha 1. Merge dtype float32 (sd-mecha's default), output float16.

`recipe` needs checkpoints sd-mecha's model configs recognise (full-size layouts); `direct`
calls the same merge function through `__wrapped__` on each key's tensors, which is what
the pipeline evaluates per key, without the configs, so it also runs at reduced widths.
"""

import sys

import torch

OPTIONS = dict(
    probability=0.1,
    rescale=False,
    k=1.0,
    vote_sgn=True,
    apply_median=True,
    eps=1e-6,
    maxiter=100,
    ftol=1e-20,
    seed=240603,
)


def recipe(out, base, models):
    import sd_mecha
    from sd_mecha.extensions.builtin.merge_methods import linear
    from sd_mecha.extensions.builtin.merge_methods.ties import ties_sum_with_dropout

    b = sd_mecha.model(base)
    deltas = [linear.subtract(sd_mecha.model(m), b) for m in models]
    res = ties_sum_with_dropout(*deltas, **OPTIONS)
    merged = linear.add_difference(b, res, alpha=1.0)
    sd_mecha.merge(merged, output=out, merge_dtype=torch.float32, output_dtype=torch.float16)


def direct(out, base, models):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from sd_mecha.extensions.builtin.merge_methods.ties import ties_sum_with_dropout

    fb = safe_open(base, "pt")
    fs = [safe_open(m, "pt") for m in models]
    result = {}
    for key in fb.keys():
        b = fb.get_tensor(key)
        if not b.is_floating_point():
            result[key] = b
            continue
        bf = b.float()
        deltas = [f.get_tensor(key).float() - bf for f in fs]
        res = ties_sum_with_dropout.__wrapped__(*deltas, **OPTIONS)
        result[key] = (bf + res).to(torch.float16).contiguous()
    save_file(result, out)


if __name__ == "__main__":
    mode, out, base, *models = sys.argv[1:]
    {"recipe": recipe, "direct": direct}[mode](out, base, models)
