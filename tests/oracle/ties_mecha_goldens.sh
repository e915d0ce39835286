#!/usr/bin/env bash
# Regenerates fixtures/ties-mecha/: sd-mecha 1.1.8's TIES on the inputs tests/ties.rs builds,
# for the CI machines that have no PyTorch. Run from the checkout, with the bench venv
# (benches/peers/setup.sh target/bench-venv):
#     tests/oracle/ties_mecha_goldens.sh target/release/ckpt-diff target/bench-venv/bin/python
set -euo pipefail
bin=$(realpath "$1")
py=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/../../fixtures/ties-mecha" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# The same inputs as `mecha_inputs` in tests/ties.rs.
"$bin" synth model --arch sd1 --scale 16 --seed 1 base.safetensors -q
for i in 1 2 3 4; do
    "$bin" synth model --arch sd1 --scale 16 --seed 1 --delta "$((10 + i)):0.3" "m$i.safetensors" -q
done
sha256sum base.safetensors m1.safetensors m2.safetensors m3.safetensors m4.safetensors >"$out/inputs.sha256"
keys=$(paste -sd, "$out/keys.txt")
for combine in mean stock median; do
    for vote in count magnitude; do
        "$py" "$here/ties_mecha.py" "$out/$combine-$vote.safetensors" base.safetensors \
            m1.safetensors m2.safetensors m3.safetensors m4.safetensors \
            --k 0.3 --vote "$vote" --combine "$combine" --keys "$keys"
    done
done
echo "wrote $out"
