#!/usr/bin/env bash
# Records what ckpt-diff prints and writes for a fixed set of commands on generated
# checkpoints, so that a refactor can be checked to change nothing: run it before and after
# into two folders and `diff -r` them. Merge and fix outputs are recorded by SHA-256 (byte
# identity); timings are blanked.
#
#   scripts/snapshot.sh OUT_DIR            # uses target/debug/ckpt-diff (cargo build first)
#   BIN=path/to/ckpt-diff scripts/snapshot.sh OUT_DIR
set -euo pipefail
out=${1:?usage: scripts/snapshot.sh OUT_DIR}
bin=${BIN:-$(dirname "$0")/../target/debug/ckpt-diff}
bin=$(realpath "$bin")
mkdir -p "$out"
out=$(realpath "$out")
# A fixed folder: `merge ws/ad` record absolute input paths in their output.
work=${SNAPSHOT_WORK:-/tmp/ckpt-diff-snapshot}
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"
export XDG_CACHE_HOME="$work/cache"

# Timings vary from run to run; everything else must not.
untime() { sed -E 's/[0-9]+\.[0-9]+ s\b/T s/g; s/"(pass|search)": [0-9.e-]+/"\1": T/g'; }
rec() {
  local name=$1 code=0; shift
  "$bin" "$@" > "$work/stdout" 2>&1 || code=$?
  { cat "$work/stdout"; echo "exit $code"; } | untime > "$out/$name"
}
sum() { sha256sum "$1" | cut -d' ' -f1 > "$out/$2.sha256"; }

"$bin" synth family sd1 --arch sd1 --scale 8 --seed 42 --finetunes 3 -q
"$bin" synth family xl --arch sdxl --scale 16 --seed 7 --finetunes 3 -q
"$bin" synth model sd1/heavy.safetensors --arch sd1 --scale 8 --seed 42 --ema --scheduler --dtype f32 -q
"$bin" synth model xl/pruned.safetensors --arch sdxl --scale 16 --seed 7 --prune-te --old-clip-names --vpred-markers -q
"$bin" synth model sd1/parts.safetensors --arch sd1 --scale 8 --seed 42 --components unet,vae --no-position-ids -q
cp sd1/family.json "$out/family.json"

for d in sd1 xl; do
  b=$d/base.safetensors; f1=$d/ft1.safetensors; f2=$d/ft2.safetensors; f3=$d/ft3.safetensors
  rec $d-inspect.txt inspect $d/mbw-ft1-ft2.safetensors
  rec $d-inspect.json inspect $d/mbw-ft1-ft2.safetensors --json
  rec $d-sim.txt sim $b $f2
  rec $d-sim-out.md sim $f2 $d/mbw-ft1-ft2.safetensors --blocks out --markdown
  rec $d-sim-sel.csv sim $f2 $d/mbw-ft1-ft2.safetensors --blocks in,mid,te --csv
  rec $d-sim.json sim $f2 $d/mbw-ft1-ft2.safetensors --json --per-tensor
  rec $d-asim.txt sim --metric asim $f2 $d/mbw-ft1-ft2.safetensors --blocks out
  rec $d-asim.json sim --metric asim $f2 $d/mbw-ft1-ft2.safetensors --json --like supermerger
  rec $d-l2.txt l2 --base $b $f1 $f2 $f3 $d/ws-ft1-ft2.safetensors
  rec $d-l2.json l2 --base $b $f1 $f2 $f3 --json
  rec $d-hash.txt hash $f1 --components
  rec $d-hash.json hash $f1 --components --json
  rec $d-validate.txt validate $f1
  i=0
  for r in \
      "OUT = A x 0.7 + B x 0.3" \
      "OUT = A + (C - B) x 0.5" \
      "S1 = A x 0.5 + B x 0.5\nS2 = S1 + (C - D) x 0.2\nOUT = S2 x (1-alpha) + A x alpha\n    alpha = {OUT: 0.8, IN: 0.2, M00: 0.5, BASE: 1}" \
      "OUT = triple_sum(A, B, C, 0.2, 0.3)" \
      "OUT = sum_twice(A, B, C, alpha=0.4, beta=0.3)" \
      "OUT = avg(A, B, C, weights=(1, 2, 3))" \
      "OUT = swap(A, B, te)" \
      "OUT = swap(A, B, vae)" \
      "OUT = ties(D, A, B, C, k=0.3, lambda=0.9, weights=(1, 0.5, 0.25))" \
      "OUT = dare(D, A, B, p=0.7, seed=42, weights=(0.6, 0.4))" \
      "OUT = dare_ties(D, A, B, C, p=0.5, seed=7)" \
      "OUT = model_stock(D, A, B, C)" \
      "OUT = geomedian(A, B, C, eps=1e-8, maxiter=50)" \
      "OUT = train_diff(A, B, D, alpha=0.7)" \
      "T = ties(D, A, B, k=0.2)\nOUT = T x 0.5 + C x 0.5" ; do
    i=$((i+1))
    printf 'A = ft1.safetensors\nB = ft2.safetensors\nC = ft3.safetensors\nD = base.safetensors\n%b\n' "$r" > $d/r$i.recipe
    rec $d-merge-$i.json merge $d/r$i.recipe -o $d/m$i.safetensors --no-input-hashes --json
    sum $d/m$i.safetensors $d-merge-$i
    for p in f32; do
      "$bin" merge $d/r$i.recipe -o $d/m$i-$p.safetensors --no-input-hashes --precision $p --dtype bf16 -q > /dev/null
      sum $d/m$i-$p.safetensors $d-merge-$i-$p
    done
  done
  rec $d-merge-ws.txt merge ws $f1 $f2 --alpha 0.3 -o $d/ws.safetensors --no-input-hashes
  sum $d/ws.safetensors $d-merge-ws
  rec $d-merge-ad.txt merge ad $f1 $f2 $b --alpha "{OUT: 0.5}" -o $d/ad.safetensors --no-input-hashes
  sum $d/ad.safetensors $d-merge-ad
  rec $d-fit.txt fit --target $d/mbw-ft1-ft2.safetensors --base $b --sources $f1 $f2 $f3 --per-block -o $d/clone.recipe
  cp $d/clone.recipe "$out/$d-clone.recipe"
  rec $d-fit.json fit --target $d/ws-ft1-ft2.safetensors --base $b --sources $f1 $f2 $f3 --region out,mid --json --force -o $d/clone2.recipe
  rec $d-fit-global.txt fit --target $d/ad-ft1-ft3.safetensors --base $b --start $f1 --sources $f2 $f3 --global --apply $d/clone3.safetensors
  sum $d/clone3.safetensors $d-fit-apply
done

rec heavy-validate.txt validate sd1/heavy.safetensors
rec heavy-validate.json validate sd1/heavy.safetensors --json
rec heavy-fix.txt fix sd1/heavy.safetensors -o sd1/heavy-fixed.safetensors --drop-ema --dtype f16
sum sd1/heavy-fixed.safetensors heavy-fix
rec heavy-fix2.json fix sd1/heavy.safetensors -o sd1/heavy-fixed2.safetensors --drop-scheduler --json
sum sd1/heavy-fixed2.safetensors heavy-fix2
rec pruned-validate.json validate xl/pruned.safetensors --json
rec pruned-fix.txt fix xl/pruned.safetensors -o xl/pruned-fixed.safetensors --base xl/base.safetensors --fill-optional
sum xl/pruned-fixed.safetensors pruned-fix
rec parts-validate.txt validate sd1/parts.safetensors
rec parts-fix.txt fix sd1/parts.safetensors -o sd1/parts-fixed.safetensors --base sd1/base.safetensors
sum sd1/parts-fixed.safetensors parts-fix
rec parts-fix-nobase.json fix sd1/parts.safetensors -o sd1/parts-fixed2.safetensors --json
rec synth-family.txt synth family fam2 --arch sd2 --scale 16 --finetunes 2
cp fam2/family.json "$out/sd2-family.json"
echo "snapshot in $out"
