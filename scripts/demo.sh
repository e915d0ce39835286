#!/usr/bin/env bash
# The demo: builds ckpt-diff, generates a family of SD1 checkpoints with the real key
# layout (a base, three fine-tunes, three merges; 1/8 of the real widths so it takes
# seconds), and runs the analyses on them; then a Flux.1 family, merged to BF16 and to
# scaled FP8; ComfyUI per-layer formats; a Q8_0 GGUF; the 2026 models (Qwen-Image, FLUX.2 klein,
# a text encoder alone); the Python wheel and module. Outputs go to demo/ (the checkpoints) and
# reports/demo/ (what the commands printed).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/ckpt-diff
data=${DEMO_DIR:-demo}
out=reports/demo
mkdir -p "$data" "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a family of generated SD1 checkpoints (base, fine-tunes ft1..ft3, merges)"
$bin synth family "$data/sd1" --arch sd1 --scale 8 --seed 42 --finetunes 3

step "what is this file?  ckpt-diff inspect"
$bin inspect "$data/sd1/mbw-ft1-ft2.safetensors" | tee "$out/inspect.txt"

step "how alike are two models, block by block?  ckpt-diff sim"
$bin sim "$data/sd1/base.safetensors" "$data/sd1/ft2.safetensors" | tee "$out/sim-base-ft2.txt"

step "a block-weighted merge against its source, output blocks only"
$bin sim "$data/sd1/ft2.safetensors" "$data/sd1/mbw-ft1-ft2.safetensors" --blocks out --markdown | tee "$out/sim-ft2-mbw.md"

step "the same, for scripts"
$bin sim "$data/sd1/ft2.safetensors" "$data/sd1/mbw-ft1-ft2.safetensors" --json > "$out/sim-ft2-mbw.json"
echo "wrote $out/sim-ft2-mbw.json"

step "ASimilarity, the metric behind published block tables (PyTorch's random input, reproduced)"
$bin sim --metric asim "$data/sd1/ft2.safetensors" "$data/sd1/mbw-ft1-ft2.safetensors" --blocks out | tee "$out/asim-ft2-mbw.txt"

step "L2 distances from the base, maps, and an HTML report"
$bin l2 --base "$data/sd1/base.safetensors" "$data/sd1/ft1.safetensors" "$data/sd1/ft2.safetensors" \
    "$data/sd1/ft3.safetensors" "$data/sd1/ws-ft1-ft2.safetensors" "$data/sd1/mbw-ft1-ft2.safetensors" \
    "$data/sd1/ad-ft1-ft3.safetensors" --report "$out/l2" | tee "$out/l2.txt"

step "merge: a three-step recipe in one pass (weighted sum, add difference, block weights)"
cat > "$data/sd1/demo.recipe" <<'RECIPE'
base = base.safetensors
ft1  = ft1.safetensors
ft2  = ft2.safetensors
ft3  = ft3.safetensors
mix  = ft1 x 0.6 + ft2 x 0.4
spicy = mix + (ft3 - base) x 0.5
OUT  = spicy x (1-alpha) + ft2 x alpha
    alpha = {OUT06..OUT11: 0.3, BASE: 1}
RECIPE
$bin merge "$data/sd1/demo.recipe" -o "$data/sd1/demo-merge.safetensors" --force | tee "$out/merge.txt"
$bin inspect "$data/sd1/demo-merge.safetensors" | sed -n '/merge recipe/,$p' | tee -a "$out/merge.txt"

step "hashes as Civitai and A1111 show them, plus component hashes"
$bin hash "$data/sd1/demo-merge.safetensors" --components | tee "$out/hash.txt"

step "validate and fix: a file with EMA weights, schedule buffers and fp32 weights"
$bin synth model "$data/sd1/heavy.safetensors" --arch sd1 --scale 8 --seed 42 --ema --scheduler --dtype f32 -q
$bin validate "$data/sd1/heavy.safetensors" | tee "$out/validate.txt" || true
$bin fix "$data/sd1/heavy.safetensors" -o "$data/sd1/heavy-fixed.safetensors" --drop-ema --dtype f16 --force | tee "$out/fix.txt"

step "fit: find the recipe of the demo merge from its sources alone, build the clone, measure it"
$bin fit --target "$data/sd1/demo-merge.safetensors" --base "$data/sd1/base.safetensors" \
    --start "$data/sd1/ft1.safetensors" --sources "$data/sd1/ft2.safetensors" "$data/sd1/ft3.safetensors" \
    "$data/sd1/ad-ft1-ft3.safetensors" --per-block --region all \
    -o "$out/clone.recipe" --apply "$data/sd1/clone.safetensors" --force | tee "$out/fit.txt"

step "the clone's check: sim against the target, with a report"
$bin sim "$data/sd1/clone.safetensors" "$data/sd1/demo-merge.safetensors" --report "$out/clone-check" \
    | tee "$out/clone-check.txt"

step "Flux.1: a generated family (1/32 of the real widths), blocks IN, D00..D18, S00..S37, OUT"
$bin synth family "$data/flux" --arch flux --scale 32 --seed 7 --finetunes 2 -q
$bin inspect "$data/flux/ft1.safetensors" | tee "$out/flux-inspect.txt"
$bin sim "$data/flux/base.safetensors" "$data/flux/ft1.safetensors" --blocks "IN, D00..D03, S34..S37, OUT, TE" \
    | tee "$out/flux-sim.txt"

step "Flux.1: a block-weighted merge written as BF16 and as ComfyUI's scaled FP8"
$bin merge ws "$data/flux/ft1.safetensors" "$data/flux/ft2.safetensors" --alpha "{D00..D18: 0.3, S00..S37: 0.7}" \
    --dtype bf16 -o "$data/flux/mbw-bf16.safetensors" --force | tee "$out/flux-merge.txt"
$bin merge ws "$data/flux/ft1.safetensors" "$data/flux/ft2.safetensors" --alpha "{D00..D18: 0.3, S00..S37: 0.7}" \
    --dtype scaled-fp8 -o "$data/flux/mbw-fp8.safetensors" --force -q > /dev/null
$bin validate "$data/flux/mbw-fp8.safetensors" | tee -a "$out/flux-merge.txt"
echo "the FP8 copy against the BF16 one (E4M3 keeps 4 significant bits):" | tee -a "$out/flux-merge.txt"
$bin sim "$data/flux/mbw-bf16.safetensors" "$data/flux/mbw-fp8.safetensors" --blocks "D00..D02, S00..S02, OUT" \
    | tee -a "$out/flux-merge.txt"

step "PyTorch .ckpt files, read without executing them (fixtures made by torch.save)"
ckpt=fixtures/torch/sd1-zip-f32.ckpt
$bin inspect "$ckpt" | tee "$out/ckpt-inspect.txt"
$bin convert "$ckpt" fixtures/torch/sd1-legacy-f16.ckpt --out-dir "$data/converted" --drop-ema --force \
    | tee "$out/ckpt-convert.txt"
$bin sim "$ckpt" "$data/converted/sd1-legacy-f16.safetensors" --blocks "IN00..IN02, OUT09..OUT11, TE1, VAE" \
    | tee -a "$out/ckpt-convert.txt"
echo "a malicious pickle (os.system through REDUCE, nested in the state dict):" | tee "$out/ckpt-evil.txt"
$bin validate fixtures/torch/evil-reduce-nested.ckpt 2>&1 | tee -a "$out/ckpt-evil.txt" || true

step "where did a checkpoint come from?  ckpt-diff index add, ckpt-diff lineage"
rm -f "$data/index.sqlite"
$bin index --index "$data/index.sqlite" add "$data"/sd1/{base,ft1,ft2,ft3,ws-ft1-ft2,ad-ft1-ft3}.safetensors -q \
    | tee "$out/index-add.txt"
$bin index --index "$data/index.sqlite" stats | tee -a "$out/index-add.txt"
$bin lineage "$data/sd1/mbw-ft1-ft2.safetensors" --index "$data/index.sqlite" --base base --verify \
    --report "$out/lineage" -q | tee "$out/lineage.txt"
$bin index --index "$data/index.sqlite" export --parquet "$data/index.parquet" -q | tee -a "$out/index-add.txt"

step "many models: a component-wise recipe over a glob, TGMD (AstolfoMix-XL's method), the plan first"
cat > "$data/sd1/many.recipe" <<'RECIPE'
base = base.safetensors
fts  = glob("ft?.safetensors")
OUT  = {UNET: tgmd(base, fts, seed=7), TE: avg(fts), VAE: base}
RECIPE
$bin merge "$data/sd1/many.recipe" -o "$data/sd1/many.safetensors" --force --dry-run | tee "$out/many-plan.txt"
$bin merge "$data/sd1/many.recipe" -o "$data/sd1/many.safetensors" --force -q | tee "$out/many.txt"
echo "a dry run that finds problems (a missing input, an existing output), all at once:" | tee -a "$out/many-plan.txt"
printf 'base = base.safetensors\nft1 = ft1.safetensors\nlost = lost.safetensors\nOUT = ties(base, ft1, lost)\n' \
    > "$data/sd1/broken.recipe"
$bin merge "$data/sd1/broken.recipe" -o "$data/sd1/many.safetensors" --dry-run 2>&1 | tee -a "$out/many-plan.txt" || true

step "LoRAs: extract one from a fine-tune, inspect it, compare it with the change it came from, bake it back, merge and convert"
$bin lora extract "$data/sd1/ft1.safetensors" --base "$data/sd1/base.safetensors" --rank 16 \
    -o "$data/sd1/ft1-r16.safetensors" --force -q | tee "$out/lora-extract.txt"
$bin lora extract "$data/sd1/ft2.safetensors" --base "$data/sd1/base.safetensors" --rank auto --energy 0.5 \
    --max-rank 32 -o "$data/sd1/ft2-auto.safetensors" --force -q | tee -a "$out/lora-extract.txt"
$bin inspect "$data/sd1/ft1-r16.safetensors" | tee "$out/lora-inspect.txt"
$bin sim "$data/sd1/ft1-r16.safetensors" "$data/sd1/ft1.safetensors" --base "$data/sd1/base.safetensors" \
    | tee "$out/lora-sim.txt"
$bin l2 --base "$data/sd1/base.safetensors" "$data/sd1/ft1-r16.safetensors" "$data/sd1/ft2-auto.safetensors" \
    | tee -a "$out/lora-sim.txt"
cat > "$data/sd1/bake.recipe" <<'RECIPE'
base = base.safetensors
l1   = ft1-r16.safetensors
l2   = ft2-auto.safetensors
OUT  = base + lora(l1) x 0.8 + lora(l2, strength=(0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0)) x 0.5
RECIPE
$bin merge "$data/sd1/bake.recipe" -o "$data/sd1/baked.safetensors" --force 2>&1 | tee "$out/lora-bake.txt"
$bin lora merge "$data/sd1/ft1-r16.safetensors:0.7" "$data/sd1/ft2-auto.safetensors:0.3" --rank 8 \
    -o "$data/sd1/merged-r8.safetensors" --force | tee "$out/lora-merge.txt"
$bin lora convert "$data/sd1/ft1-r16.safetensors" --to peft -o "$data/sd1/ft1-peft.safetensors" --force \
    | tee -a "$out/lora-merge.txt"

step "ComfyUI's per-layer quantization: the Flux merge written in nvfp4 and int8 as ComfyUI stores them, read decoded"
$bin merge ws "$data/flux/ft1.safetensors" "$data/flux/ft2.safetensors" --alpha "{D00..D18: 0.3, S00..S37: 0.7}" \
    --dtype nvfp4 -o "$data/flux/mbw-nvfp4.safetensors" --force -q > /dev/null
$bin convert "$data/flux/mbw-bf16.safetensors" --dtype int8 -o "$data/flux/mbw-int8.safetensors" --force \
    | tee "$out/quant.txt"
$bin inspect "$data/flux/mbw-nvfp4.safetensors" | head -8 | tee -a "$out/quant.txt"
echo "nvfp4 and int8 against the BF16 merge (4 and 8 bits a weight):" | tee -a "$out/quant.txt"
$bin sim "$data/flux/mbw-bf16.safetensors" "$data/flux/mbw-nvfp4.safetensors" --blocks "D00..D02, S00..S02, OUT" \
    | tee -a "$out/quant.txt"
$bin sim "$data/flux/mbw-bf16.safetensors" "$data/flux/mbw-int8.safetensors" --blocks "D00..D02, OUT" \
    | tee -a "$out/quant.txt"
echo "a damaged record (zero bytes, Comfy-Org issue #15567) is refused, never read as weights:" | tee -a "$out/quant.txt"
python3 - "$data/flux/mbw-int8.safetensors" "$data/flux/damaged.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
name = next(k for k in h if k.endswith(".comfy_quant"))
lo, hi = h[name]["data_offsets"]
body = bytearray(b[8 + n:])
body[lo:hi] = bytes(hi - lo)
open(sys.argv[2], "wb").write(b[:8 + n] + bytes(body))
PY
$bin inspect "$data/flux/damaged.safetensors" 2>&1 | tee -a "$out/quant.txt" || true

step "GGUF: the Flux merge written as city96's Q8_0 GGUF, inspected, and what quantization cost per block"
$bin convert "$data/flux/mbw-bf16.safetensors" -o "$data/flux/mbw-Q8_0.gguf" --quant Q8_0 --force -q \
    | tee "$out/gguf.txt"
$bin inspect "$data/flux/mbw-Q8_0.gguf" | head -7 | tee -a "$out/gguf.txt"
$bin sim "$data/flux/mbw-bf16.safetensors" "$data/flux/mbw-Q8_0.gguf" --blocks "IN, D00..D02, S35..S37, OUT" \
    | tee -a "$out/gguf.txt"

step "the 2026 models: Qwen-Image (ComfyUI's ModelMergeQwenImage rows) and FLUX.2 klein, told from Flux.1 by names and shapes; a Qwen3-4B text encoder alone"
$bin synth family "$data/qwen" --arch qwen-image --scale 32 --seed 7 -q > /dev/null
$bin inspect "$data/qwen/base.safetensors" | head -4 | tee "$out/models-2026.txt"
$bin sim "$data/qwen/base.safetensors" "$data/qwen/mbw-ft1-ft2.safetensors" \
    --blocks "IMG_IN, TXT_NORM, TXT_IN, TIME_TEXT_EMBED, B00..B02, B57..B59, NORM_OUT, PROJ_OUT" \
    | tee -a "$out/models-2026.txt"
$bin synth model "$data/klein-4b.safetensors" --arch flux2-klein-4b --scale 32 -q > /dev/null
$bin inspect "$data/klein-4b.safetensors" | head -4 | tee -a "$out/models-2026.txt"
# Its text encoder saved alone, as transformers names it (Qwen3-4B: Z-Image uses it too).
$bin synth model "$data/klein-4b-te.safetensors" --arch flux2-klein-4b --scale 32 --components qwen3_4b -q > /dev/null
python3 - "$data/klein-4b-te.safetensors" "$data/qwen3-4b.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = {k.removeprefix("text_encoders.qwen3_4b.transformer."): v for k, v in json.loads(b[8:8 + n]).items()}
head = json.dumps(h).encode()
head += b" " * (-len(head) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(head)) + head + b[8 + n:])
PY
$bin inspect "$data/qwen3-4b.safetensors" | head -7 | tee -a "$out/models-2026.txt"

step "Python: the wheel (pip install .), the same sim from the module, and the L2 map of the SD1 family drawn with matplotlib"
if command -v python3 >/dev/null; then
    venv=target/demo-venv
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet . matplotlib
    "$venv/bin/python" - "$data/sd1" <<'PY' | tee "$out/python.txt"
import sys
import ckpt_diff
d = sys.argv[1]
r = ckpt_diff.sim(f"{d}/ft2.safetensors", f"{d}/mbw-ft1-ft2.safetensors", blocks="OUT09..OUT11")
print({row["label"]: round(row["similarity"], 6) for row in r["rows"]})
try:
    ckpt_diff.inspect(f"{d}/no-such-model.safetensors")
except ckpt_diff.CkptIOError as e:
    print(type(e).__name__, e)
PY
    "$venv/bin/python" docs/examples/l2_map.py "$data/sd1" "$out/l2-map-python.png" | tee -a "$out/python.txt"
else
    echo "(no python3: skipped)"
fi

step "done: outputs in $out/ (reports: $out/l2/index.html, $out/clone-check/index.html, $out/lineage/index.html)"
