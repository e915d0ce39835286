# ckpt-diff tasks. `just --list` shows them; each is a plain command you can also paste.

# Build and run the demo on generated checkpoints (outputs in reports/demo/).
demo:
    scripts/demo.sh

# Run every test (the command CI runs).
test:
    cargo test --workspace --locked

# The Python wheel and its tests: the module against the binary, the ComfyUI nodes.
test-python:
    scripts/test-python.sh

# Format and lint as CI expects.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo check --features portable-io

# The crate for Windows and macOS (needs `rustup target add x86_64-pc-windows-gnu
# x86_64-apple-darwin`; blake3's C code is left out for the macOS check, which has no C
# cross-compiler here). `--no-default-features` leaves out SQLite's bundled C source for the
# same reason; `cargo check` links nothing, so every line of Rust is still checked.
check-platforms:
    cargo check --workspace --target x86_64-pc-windows-gnu --no-default-features
    CARGO_FEATURE_PURE=1 cargo check --workspace --target x86_64-apple-darwin --no-default-features

# The test suite on the portable file-system path (what Windows runs).
test-portable:
    CKPT_DIFF_IO=portable cargo test --workspace --locked

# Release build.
build:
    cargo build --release

# All benchmarks (full-size inputs are generated once into target/bench-data).
bench: bench-kernels bench-sim bench-merge bench-hash bench-l2 bench-fit

# Kernel throughput in cache, every kernel level of this CPU.
bench-kernels:
    cargo bench --bench kernels

# `sim` on two full-size SD1.5 fp16 files beside this machine's memory bandwidth.
bench-sim:
    cargo bench --bench sim_full

# `merge` on full-size SDXL fp16 files: time and peak memory (2 and 20 inputs).
bench-merge:
    cargo bench --bench merge_full

# `l2` over 1 base + 8 full-size SD1.5 fp16 models: time, GB/s, peak memory.
bench-l2:
    cargo bench --bench l2_full

# `fit` with 1 target + 8 full-size SD1.5 fp16 sources: the pass beside one plain read.
bench-fit:
    cargo bench --bench fit_full

# `convert` of a full-size SD1 fp32 .ckpt with EMA beside a plain copy and PyTorch (needs
# target/bench-venv: benches/peers/setup.sh target/bench-venv).
bench-convert:
    cargo bench --bench convert_full

# `hash` on a full-size SDXL fp16 file beside each algorithm alone.
bench-hash:
    cargo bench --bench hash_full

# ckpt-diff beside PyTorch, sd-mecha and hashlib on the same full-size files (installs the
# Python peers into target/bench-venv; writes reports/bench/peers.md).
bench-peers:
    cargo bench --bench peers

# sim and merge on full-size Flux.1 dev diffusers, FP8 and BF16 pairs (~60 GB of disk at
# its peak, deleted at the end; writes reports/bench/flux.md).
bench-flux:
    cargo bench --bench flux_full

# convert --quant Q8_0/Q4_K_M and sim of a Flux.1 dev GGUF beside gguf-py, and the cost of
# every GGUF type (~37 GB of disk at its peak, deleted at the end; writes
# reports/bench/gguf-flux-dev.md).
bench-gguf:
    cargo bench --bench gguf_full

# Delete the generated benchmark inputs (several GB).
bench-clean:
    rm -rf target/bench-data
