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
# The project's own files (fixtures), whatever binary runs: the script's checkout.
root=$(realpath "$(dirname "$0")/..")
mkdir -p "$out"
out=$(realpath "$out")
# A fixed folder: `merge ws/ad` record absolute input paths in their output.
work=${SNAPSHOT_WORK:-/tmp/ckpt-diff-snapshot}
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"
export XDG_CACHE_HOME="$work/cache"

# Timings vary from run to run; everything else must not.
untime() { sed -E 's/[0-9]+\.[0-9]+ s\b/T s/g; s/"(pass|search|seconds)": [0-9.e-]+/"\1": T/g; s#at [0-9.]+ [KMG]B/s#at R#g; s/\(([0-9.]+) [KMGT]B free there\)/(F free there)/; s/"(free_bytes|predicted_seconds)": [0-9.e-]+/"\1": F/' | perl -0pe 's/"rate": \[\n\s*[0-9.e+-]+,/"rate": [ R,/g'; }
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
  rec $d-inspect.md inspect $d/mbw-ft1-ft2.safetensors --markdown
  rec $d-inspect.csv inspect $d/mbw-ft1-ft2.safetensors --csv
  rec $d-sim.txt sim $b $f2
  rec $d-sim-out.md sim $f2 $d/mbw-ft1-ft2.safetensors --blocks out --markdown
  rec $d-sim-sel.csv sim $f2 $d/mbw-ft1-ft2.safetensors --blocks in,mid,te --csv
  rec $d-sim.json sim $f2 $d/mbw-ft1-ft2.safetensors --json --per-tensor
  rec $d-asim.txt sim --metric asim $f2 $d/mbw-ft1-ft2.safetensors --blocks out
  rec $d-asim.json sim --metric asim $f2 $d/mbw-ft1-ft2.safetensors --json --like supermerger
  rec $d-asim.md sim --metric asim $f2 $d/mbw-ft1-ft2.safetensors --markdown --precision f64
  rec $d-l2.txt l2 --base $b $f1 $f2 $f3 $d/ws-ft1-ft2.safetensors
  rec $d-l2.json l2 --base $b $f1 $f2 $f3 --json
  rec $d-l2.csv l2 --base $b $f1 $f2 $f3 --csv
  rec $d-l2.md l2 --base $b $f1 $f2 $f3 --markdown
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

# --- Beyond SD1/SDXL: every command's help, the other architectures, torch files, LoRAs,
# the index and lineage, component-wise recipes, reports and refusals.
rec help.txt --help
for c in sim l2 inspect hash validate fix merge fit convert lora index lineage synth; do
  rec help-$c.txt $c --help
done
rec help-merge-ws.txt merge ws --help
for c in extract merge convert; do rec help-lora-$c.txt lora $c --help; done
for c in add ls rm export stats; do rec help-index-$c.txt index $c --help; done
for c in model family; do rec help-synth-$c.txt synth $c --help; done

"$bin" synth family flux --arch flux --scale 32 --seed 7 --finetunes 2 -q
rec flux-inspect.txt inspect flux/ft1.safetensors
rec flux-inspect.json inspect flux/ft1.safetensors --json
rec flux-sim.txt sim flux/base.safetensors flux/ft1.safetensors --blocks "IN, D00..D03, S34..S37, OUT, TE"
rec flux-merge.txt merge ws flux/ft1.safetensors flux/ft2.safetensors --alpha "{D00..D18: 0.3, S00..S37: 0.7}" --dtype bf16 -o flux/mbw-bf16.safetensors --no-input-hashes
sum flux/mbw-bf16.safetensors flux-merge-bf16
rec flux-merge-fp8.txt merge ws flux/ft1.safetensors flux/ft2.safetensors --alpha "{D00..D18: 0.3, S00..S37: 0.7}" --dtype scaled-fp8 -o flux/mbw-fp8.safetensors --no-input-hashes
sum flux/mbw-fp8.safetensors flux-merge-fp8
rec flux-fp8-validate.txt validate flux/mbw-fp8.safetensors
rec flux-fp8-inspect.json inspect flux/mbw-fp8.safetensors --json
rec flux-fp8-sim.txt sim flux/mbw-bf16.safetensors flux/mbw-fp8.safetensors --blocks "D00..D02, S00..S02, OUT"
rec flux-l2.txt l2 --base flux/base.safetensors flux/ft1.safetensors flux/ft2.safetensors flux/mbw-fp8.safetensors
rec flux-hash.txt hash flux/ft1.safetensors --components
rec flux-convert.txt convert flux/mbw-fp8.safetensors -o flux/conv.safetensors --dtype f16
sum flux/conv.safetensors flux-convert
for a in sd2 chroma sd3 sd35m sd35l; do
  "$bin" synth model $a.safetensors --arch $a --scale 32 --seed 3 -q
  "$bin" synth model $a-2.safetensors --arch $a --scale 32 --seed 3 --delta 5:0.1 -q
  rec $a-inspect.json inspect $a.safetensors --json
  rec $a-sim.txt sim $a.safetensors $a-2.safetensors
  rec $a-validate.txt validate $a.safetensors
done
"$bin" synth model flux-bare.safetensors --arch flux --scale 32 --bare --variant schnell -q
rec flux-bare-inspect.txt inspect flux-bare.safetensors
"$bin" synth model sd1-inpaint.safetensors --arch sd1 --scale 16 --variant inpainting -q
rec sd1-inpaint-inspect.txt inspect sd1-inpaint.safetensors
"$bin" synth model sd1-f8.safetensors --arch sd1 --scale 16 --dtype f8_e4m3 -q
rec sd1-f8-inspect.txt inspect sd1-f8.safetensors

fx=$root/fixtures/torch
rec ckpt-inspect.txt inspect $fx/sd1-zip-f32.ckpt
rec ckpt-inspect.json inspect $fx/sd1-legacy-bf16.ckpt --json
rec ckpt-validate.txt validate $fx/ema-beside.ckpt
mkdir -p conv
rec ckpt-convert.txt convert $fx/sd1-zip-f32.ckpt $fx/sd1-legacy-f16.ckpt --out-dir conv --drop-ema
for f in conv/*.safetensors; do sum $f ckpt-convert-$(basename $f); done
rec ckpt-sim.txt sim $fx/sd1-zip-f32.ckpt conv/sd1-legacy-f16.safetensors --blocks "IN00..IN02, OUT09..OUT11, TE1, VAE"
rec ckpt-evil.txt validate $fx/evil-reduce-nested.ckpt
rec ckpt-evil-inspect.txt inspect $fx/evil-exec.ckpt
rec ckpt-evil-inspect.md inspect $fx/evil-exec.ckpt --markdown
rec ckpt-inspect.csv inspect $fx/sd1-zip-f32.ckpt --csv
rec ckpt-hash.txt hash $fx/tiny-zip.ckpt

rec idx-add.txt index --index idx.sqlite add sd1/base.safetensors sd1/ft1.safetensors sd1/ft2.safetensors sd1/ft3.safetensors sd1/ws-ft1-ft2.safetensors sd1/ad-ft1-ft3.safetensors -q
rec idx-stats.txt index --index idx.sqlite stats
rec idx-stats.json index --index idx.sqlite stats --json
rec lineage.txt lineage sd1/mbw-ft1-ft2.safetensors --index idx.sqlite --base base --verify -q
rec lineage.json lineage sd1/mbw-ft1-ft2.safetensors --index idx.sqlite --base base --json -q
rec idx-rm.txt index --index idx.sqlite rm ft3

printf 'base = base.safetensors\nfts  = glob("ft*.safetensors")\nOUT  = {UNET: tgmd(base, fts, seed=7), TE: avg(fts), VAE: base}\n' > sd1/many.recipe
rec many-plan.txt merge sd1/many.recipe -o sd1/many.safetensors --dry-run
rec many.json merge sd1/many.recipe -o sd1/many.safetensors --no-input-hashes --json
sum sd1/many.safetensors many
printf 'base = base.safetensors\nft1 = ft1.safetensors\nlost = lost.safetensors\nOUT = ties(base, ft1, lost)\n' > sd1/broken.recipe
rec broken-plan.txt merge sd1/broken.recipe -o sd1/many.safetensors --dry-run

rec lora-extract.txt lora extract sd1/ft1.safetensors --base sd1/base.safetensors --rank 16 -o sd1/ft1-r16.safetensors -q
sum sd1/ft1-r16.safetensors lora-extract
rec lora-extract2.json lora extract sd1/ft2.safetensors --base sd1/base.safetensors --rank auto --energy 0.5 --max-rank 32 --conv-rank 4 -o sd1/ft2-auto.safetensors -q --json
sum sd1/ft2-auto.safetensors lora-extract2
rec lora-inspect.txt inspect sd1/ft1-r16.safetensors
rec lora-inspect.json inspect sd1/ft2-auto.safetensors --json
rec lora-sim.txt sim sd1/ft1-r16.safetensors sd1/ft1.safetensors --base sd1/base.safetensors
rec lora-sim2.txt sim sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors
rec lora-l2.txt l2 --base sd1/base.safetensors sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors
rec lora-inspect.md inspect sd1/ft1-r16.safetensors --markdown
rec lora-inspect.csv inspect sd1/ft1-r16.safetensors --csv
rec inspect-two.json inspect sd1/base.safetensors sd1/ft1-r16.safetensors --json
rec inspect-two.md inspect sd1/base.safetensors sd1/ft1-r16.safetensors --markdown
rec lora-sim.json sim sd1/ft1-r16.safetensors sd1/ft1.safetensors --base sd1/base.safetensors --json
rec lora-sim2.csv sim sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors --csv
rec lora-sim2.md sim sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors --markdown
rec lora-l2.json l2 --base sd1/base.safetensors sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors --json
rec lora-l2.csv l2 --base sd1/base.safetensors sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors --csv
rec lora-l2.md l2 --base sd1/base.safetensors sd1/ft1-r16.safetensors sd1/ft2-auto.safetensors --markdown
printf 'base = base.safetensors\nl1 = ft1-r16.safetensors\nl2 = ft2-auto.safetensors\nOUT = base + lora(l1) x 0.8 + lora(l2, strength=(0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0)) x 0.5\n' > sd1/bake.recipe
rec lora-bake.txt merge sd1/bake.recipe -o sd1/baked.safetensors --no-input-hashes
sum sd1/baked.safetensors lora-bake
rec lora-merge.txt lora merge sd1/ft1-r16.safetensors:0.7 sd1/ft2-auto.safetensors:0.3 --rank 8 -o sd1/merged-r8.safetensors
sum sd1/merged-r8.safetensors lora-merge
rec lora-concat.json lora merge sd1/ft1-r16.safetensors sd1/ft1-r16.safetensors:0.5 --concat -o sd1/concat.safetensors --json
sum sd1/concat.safetensors lora-concat
rec lora-convert.txt lora convert sd1/ft1-r16.safetensors --to peft -o sd1/ft1-peft.safetensors
sum sd1/ft1-peft.safetensors lora-convert
rec lora-peft-inspect.txt inspect sd1/ft1-peft.safetensors
rec lora-xl-extract.txt lora extract xl/ft1.safetensors --base xl/base.safetensors --rank 8 -o xl/ft1-r8.safetensors -q
sum xl/ft1-r8.safetensors lora-xl-extract
rec lora-flux-extract.txt lora extract flux/ft1.safetensors --base flux/base.safetensors --rank 4 -o flux/ft1-r4.safetensors -q
sum flux/ft1-r4.safetensors lora-flux-extract
rec lora-flux-convert.txt lora convert flux/ft1-r4.safetensors --to peft -o flux/ft1-peft.safetensors
sum flux/ft1-peft.safetensors lora-flux-convert
rec lora-flux-inspect.txt inspect flux/ft1-peft.safetensors

rec sim-report.txt sim sd1/ft2.safetensors sd1/mbw-ft1-ft2.safetensors --report rep-sim
sum rep-sim/summary.md sim-report-summary
rec l2-report.txt l2 --base sd1/base.safetensors sd1/ft1.safetensors sd1/ft2.safetensors sd1/ft3.safetensors --report rep-l2
sum rep-l2/summary.md l2-report-summary

# Refusals: each names the file and the problem.
printf 'not a checkpoint' > junk.safetensors
rec bad-junk.txt inspect junk.safetensors
head -c 1000 sd1/base.safetensors > trunc.safetensors
rec bad-trunc.txt sim trunc.safetensors sd1/base.safetensors
printf 'GGUF\x03\x00\x00\x00' > m.gguf
rec bad-gguf.txt inspect m.gguf
rec bad-missing.txt hash nothere.safetensors
rec bad-arch.txt sim sd1/base.safetensors xl/base.safetensors
rec bad-recipe.txt merge sd1/bake.recipe -o sd1/base.safetensors
printf 'A = ft1.safetensors\nOUT = ties(A, k=2)\n' > sd1/badopt.recipe
rec bad-option.txt merge sd1/badopt.recipe -o x.safetensors --dry-run
rec bad-flag.txt sim --metric asim --csv --seed 3 sd1/base.safetensors sd1/ft1.safetensors --like wkpark
rec bad-flag2.txt sim --seed 3 sd1/base.safetensors sd1/ft1.safetensors
# --csv and --markdown of every command that prints a result (and clap's refusals of
# typed flags); written last, into new/, so that nothing above sees their files.
mkdir -p new
for d in sd1 xl; do
  rec $d-hash.csv hash $d/ft1.safetensors $d/ft2.safetensors --components --csv
  rec $d-hash.md hash $d/ft1.safetensors --markdown
  rec $d-fit.csv fit --target $d/mbw-ft1-ft2.safetensors --base $d/base.safetensors --sources $d/ft1.safetensors $d/ft2.safetensors $d/ft3.safetensors --per-block --csv
  rec $d-fit.md fit --target $d/ws-ft1-ft2.safetensors --base $d/base.safetensors --sources $d/ft1.safetensors $d/ft2.safetensors --markdown
done
rec heavy-validate.csv validate sd1/heavy.safetensors sd1/base.safetensors --csv
rec heavy-validate.md validate sd1/heavy.safetensors --markdown
rec heavy-fix.csv fix sd1/heavy.safetensors -o new/heavy-fixed.safetensors --drop-ema --dtype f16 --csv
rec parts-fix.md fix sd1/parts.safetensors -o new/parts-fixed.safetensors --base sd1/base.safetensors --markdown
rec ckpt-convert.csv convert $fx/sd1-zip-f32.ckpt $fx/sd1-legacy-f16.ckpt --out-dir new --drop-ema --csv
rec ckpt-convert.md convert $fx/sd1-zip-f32.ckpt -o new/one.safetensors --dtype bf16 --markdown
printf 'base = base.safetensors\nfts  = glob("ft?.safetensors")\nOUT  = {UNET: tgmd(base, fts, seed=7), TE: avg(fts), VAE: base}\n' > sd1/many2.recipe
rec many-plan.csv merge sd1/many2.recipe -o new/many.safetensors --dry-run --csv
rec many-plan.md merge sd1/many2.recipe -o new/many.safetensors --dry-run --markdown
rec merge-ws.csv merge ws sd1/ft1.safetensors sd1/ft2.safetensors --alpha 0.3 -o new/ws.safetensors --no-input-hashes --csv -q
rec idx-ls.txt index --index idx.sqlite ls
rec idx-ls.csv index --index idx.sqlite ls --csv
rec idx-ls.md index --index idx.sqlite ls --markdown
rec idx-stats.csv index --index idx.sqlite stats --csv
rec idx-stats.md index --index idx.sqlite stats --markdown
rec lineage.csv lineage sd1/mbw-ft1-ft2.safetensors --index idx.sqlite --base base --verify --csv -q
rec lineage.md lineage sd1/mbw-ft1-ft2.safetensors --index idx.sqlite --base base --markdown -q
rec lora-extract.csv lora extract sd1/ft3.safetensors --base sd1/base.safetensors --rank 8 -o new/ft3-r8.safetensors --csv -q
rec lora-merge.csv lora merge sd1/ft1-r16.safetensors:0.7 sd1/ft2-auto.safetensors:0.3 --rank 8 -o new/merged-r8.safetensors --csv
rec lora-convert.md lora convert sd1/ft1-r16.safetensors --to peft -o new/ft1-peft.safetensors --markdown
rec bad-dtype.txt merge sd1/many2.recipe -o new/x.safetensors --dtype int8 --dry-run
rec bad-bounds.txt fit --target sd1/ft1.safetensors --base sd1/base.safetensors --sources sd1/ft2.safetensors --bounds 1:0
rec bad-lora-merge.txt lora merge sd1/ft1-r16.safetensors -o new/x.safetensors
rec bad-convert.txt convert sd1/ft1.safetensors
rec bad-flag3.txt sim --metric cosine --seed 3 sd1/base.safetensors sd1/ft1.safetensors
echo "snapshot in $out"
