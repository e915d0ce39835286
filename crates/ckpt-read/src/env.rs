//! Every environment variable ckpt-diff, its tests and its benchmarks read, declared once with
//! what it does. Code reads a variable through its [`Var`] (never by a name spelled out
//! elsewhere), and `docs/environment.md` lists them all (a test checks that it does).

/// Who reads a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The command itself.
    Run,
    /// Builds with the `test-hooks` feature only (`cargo test` builds them; releases do not).
    TestHook,
    /// The test suite.
    Tests,
    /// The benchmarks.
    Benches,
}

/// An environment variable and its documentation.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub name: &'static str,
    pub scope: Scope,
    /// What it does, in one or two sentences.
    pub doc: &'static str,
}

impl Var {
    /// Its value, if set and valid Unicode.
    pub fn get(&self) -> Option<String> {
        std::env::var(self.name).ok()
    }

    /// Its value as the OS gives it, if set.
    pub fn get_os(&self) -> Option<std::ffi::OsString> {
        std::env::var_os(self.name)
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.get_os().is_some()
    }
}

/// Declares each variable as a constant (documented by its `doc`) and lists them all in
/// [`ALL`], in the order written.
macro_rules! vars {
    ($($id:ident = $name:literal, $scope:ident, $doc:literal;)*) => {
        $(
            #[doc = $doc]
            pub const $id: Var = Var { name: $name, scope: Scope::$scope, doc: $doc };
        )*

        /// Every variable, in the order `docs/environment.md` lists them.
        pub const ALL: &[Var] = &[$($id),*];
    };
}

vars! {
    IO = "CKPT_DIFF_IO", Run,
        "`portable` selects the plain-std file-system path (what Windows runs) on Unix, \
        without a rebuild; CI runs the test suite a second time that way.";
    KERNELS = "CKPT_DIFF_KERNELS", Run,
        "`portable`, `avx2` or `avx512` caps the SIMD kernel level (default: the best the \
        CPU has); results are the same on every level, only the speed differs.";
    XDG_CACHE_HOME = "XDG_CACHE_HOME", Run,
        "The cache folder is `$XDG_CACHE_HOME/ckpt-diff` (hashes of unchanged files and \
        the merge rates the plan predicts times from, which `--no-cache` neither reads nor \
        writes; and the default lineage index).";
    LOCALAPPDATA = "LOCALAPPDATA", Run,
        "Without `XDG_CACHE_HOME`, the cache folder is `%LOCALAPPDATA%/ckpt-diff` (Windows).";
    HOME = "HOME", Run,
        "Otherwise the cache folder is `~/.cache/ckpt-diff`; recipes expand `~/` in paths \
        with it.";
    HOLD_AFTER_BYTES = "CKPT_DIFF_HOLD_AFTER_BYTES", TestHook,
        "`N`: a pass stops once N bytes are done, prints `ckpt-diff: holding until \
        interrupted` and waits for Ctrl-C, so the interrupt test signals at a known point.";
    PYTHON = "CKPT_DIFF_PYTHON", Tests,
        "The Python interpreter of the oracle scripts in `tests/oracle/` (default `python3`; \
        `.ci/run` sets its virtual environment), and of the peers of quant_full \
        (comfy-kitchen) and gguf_full (gguf-py; default `target/golden-venv/bin/python`).";
    REQUIRE_PY_BLAKE3 = "CKPT_DIFF_REQUIRE_PY_BLAKE3", Tests,
        "Set: the hash tests fail, instead of skipping the BLAKE3 check, when the oracle's \
        Python lacks the `blake3` module (CI sets it).";
    REQUIRE_PY_DUCKDB = "CKPT_DIFF_REQUIRE_PY_DUCKDB", Tests,
        "Set: the Parquet export test fails, instead of skipping, when the oracle's Python \
        lacks `duckdb` (CI sets it).";
    MECHA_PYTHON = "CKPT_DIFF_MECHA_PYTHON", Tests,
        "A Python with sd-mecha for the TIES tests to run live (`none`: use the committed \
        goldens only).";
    COMFYUI_GGUF = "CKPT_DIFF_COMFYUI_GGUF", Tests,
        "A ComfyUI-GGUF checkout (its .py files): the GGUF writer's test loads what it writes \
        with ComfyUI-GGUF's own loader (`fixtures/gguf-write/comfyui_gguf_check.py`); unset, \
        that test is skipped.";
    COMFYUI = "CKPT_DIFF_COMFYUI", Tests,
        "The ComfyUI checkout ComfyUI-GGUF imports `comfy` from, for that test (default \
        `target/ComfyUI`).";
    COMFYUI_PYTHON = "CKPT_DIFF_COMFYUI_PYTHON", Tests,
        "The Python with torch, numpy, gguf and safetensors that runs that test's script \
        (default `target/cui-venv/bin/python`).";
    BENCH_DIR = "CKPT_DIFF_BENCH_DIR", Benches,
        "Where full-size benchmark inputs are generated and kept between runs (default \
        `target/bench-data`).";
    BENCH_KEEP = "CKPT_DIFF_BENCH_KEEP", Benches,
        "Set: benchmarks that delete their inputs at the end keep them.";
    BENCH_RUNS = "CKPT_DIFF_BENCH_RUNS", Benches,
        "Timed runs per measurement in `peers` (default 3).";
    BENCH_ONLY = "CKPT_DIFF_BENCH_ONLY", Benches,
        "Runs one part of a benchmark: `commands` (flux_full), `sd1`, `sdxl` or `bake` \
        (lora_full), `types` or `full` (gguf_full).";
    BENCH_ARCH = "CKPT_DIFF_BENCH_ARCH", Benches,
        "The DiT flux_full runs on: `flux` (default) or another of the catalog's diffusion \
        transformers (`flux2-klein-9b`, `qwen-image`, `z-image`, ...).";
    BENCH_PYTHON = "CKPT_DIFF_BENCH_PYTHON", Benches,
        "The Python with the peers (PyTorch, sd-mecha) instead of `target/bench-venv`.";
    BENCH_KOHYA = "CKPT_DIFF_BENCH_KOHYA", Benches,
        "`0` leaves kohya's extraction script out of lora_full.";
    BENCH_KOHYA_SDXL = "CKPT_DIFF_BENCH_KOHYA_SDXL", Benches,
        "`0` runs kohya's script on SD1 only (on SDXL it holds both models in memory).";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        let mut names: Vec<&str> = ALL.iter().map(|v| v.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert!(ALL.iter().all(|v| v.doc.len() > 20));
    }
}
