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

/// `portable` selects the plain-`std` file-system path (what Windows runs) on Unix, without
/// a rebuild.
pub const IO: Var = Var {
    name: "CKPT_DIFF_IO",
    scope: Scope::Run,
    doc: "`portable` selects the plain-std file-system path (what Windows runs) on Unix, \
          without a rebuild; CI runs the test suite a second time that way.",
};

/// Caps the SIMD kernel level.
pub const KERNELS: Var = Var {
    name: "CKPT_DIFF_KERNELS",
    scope: Scope::Run,
    doc: "`portable`, `avx2` or `avx512` caps the SIMD kernel level (default: the best the \
          CPU has); results are the same on every level, only the speed differs.",
};

/// The cache folder, first choice.
pub const XDG_CACHE_HOME: Var = Var {
    name: "XDG_CACHE_HOME",
    scope: Scope::Run,
    doc: "The cache folder is `$XDG_CACHE_HOME/ckpt-diff` (hashes of unchanged files and \
          the merge rates the plan predicts times from, which `--no-cache` neither reads nor \
          writes; and the default lineage index).",
};

/// The cache folder on Windows.
pub const LOCALAPPDATA: Var = Var {
    name: "LOCALAPPDATA",
    scope: Scope::Run,
    doc: "Without `XDG_CACHE_HOME`, the cache folder is `%LOCALAPPDATA%/ckpt-diff` (Windows).",
};

/// The home folder.
pub const HOME: Var = Var {
    name: "HOME",
    scope: Scope::Run,
    doc: "Otherwise the cache folder is `~/.cache/ckpt-diff`; recipes expand `~/` in paths \
          with it.",
};

/// The interrupt test's hook.
pub const HOLD_AFTER_BYTES: Var = Var {
    name: "CKPT_DIFF_HOLD_AFTER_BYTES",
    scope: Scope::TestHook,
    doc: "`N`: a pass stops once N bytes are done, prints `ckpt-diff: holding until \
          interrupted` and waits for Ctrl-C, so the interrupt test signals at a known point.",
};

/// The Python the oracles run with.
pub const PYTHON: Var = Var {
    name: "CKPT_DIFF_PYTHON",
    scope: Scope::Tests,
    doc: "The Python interpreter of the oracle scripts in `tests/oracle/` (default `python3`; \
          `.ci/run` sets its virtual environment).",
};

/// Makes the BLAKE3 oracle required.
pub const REQUIRE_PY_BLAKE3: Var = Var {
    name: "CKPT_DIFF_REQUIRE_PY_BLAKE3",
    scope: Scope::Tests,
    doc: "Set: the hash tests fail, instead of skipping the BLAKE3 check, when the oracle's \
          Python lacks the `blake3` module (CI sets it).",
};

/// Makes the DuckDB oracle required.
pub const REQUIRE_PY_DUCKDB: Var = Var {
    name: "CKPT_DIFF_REQUIRE_PY_DUCKDB",
    scope: Scope::Tests,
    doc: "Set: the Parquet export test fails, instead of skipping, when the oracle's Python \
          lacks `duckdb` (CI sets it).",
};

/// The Python with sd-mecha.
pub const MECHA_PYTHON: Var = Var {
    name: "CKPT_DIFF_MECHA_PYTHON",
    scope: Scope::Tests,
    doc: "A Python with sd-mecha for the TIES tests to run live (`none`: use the committed \
          goldens only).",
};

/// Where full-size benchmark inputs live.
pub const BENCH_DIR: Var = Var {
    name: "CKPT_DIFF_BENCH_DIR",
    scope: Scope::Benches,
    doc: "Where full-size benchmark inputs are generated and kept between runs (default \
          `target/bench-data`).",
};

/// Keeps benchmark inputs.
pub const BENCH_KEEP: Var = Var {
    name: "CKPT_DIFF_BENCH_KEEP",
    scope: Scope::Benches,
    doc: "Set: benchmarks that delete their inputs at the end keep them.",
};

/// Repetitions of a timed run.
pub const BENCH_RUNS: Var = Var {
    name: "CKPT_DIFF_BENCH_RUNS",
    scope: Scope::Benches,
    doc: "Timed runs per measurement in `peers` (default 3).",
};

/// One part of a benchmark.
pub const BENCH_ONLY: Var = Var {
    name: "CKPT_DIFF_BENCH_ONLY",
    scope: Scope::Benches,
    doc: "Runs one part of a benchmark: `commands` (flux_full), `sd1`, `sdxl` or `bake` \
          (lora_full).",
};

/// The peers' Python.
pub const BENCH_PYTHON: Var = Var {
    name: "CKPT_DIFF_BENCH_PYTHON",
    scope: Scope::Benches,
    doc: "The Python with the peers (PyTorch, sd-mecha) instead of `target/bench-venv`.",
};

/// kohya's script in the LoRA benchmark.
pub const BENCH_KOHYA: Var = Var {
    name: "CKPT_DIFF_BENCH_KOHYA",
    scope: Scope::Benches,
    doc: "`0` leaves kohya's extraction script out of lora_full.",
};

/// kohya's script on SDXL in the LoRA benchmark.
pub const BENCH_KOHYA_SDXL: Var = Var {
    name: "CKPT_DIFF_BENCH_KOHYA_SDXL",
    scope: Scope::Benches,
    doc: "`0` runs kohya's script on SD1 only (on SDXL it holds both models in memory).",
};

/// Every variable, in the order `docs/environment.md` lists them.
pub const ALL: &[Var] = &[
    IO,
    KERNELS,
    XDG_CACHE_HOME,
    LOCALAPPDATA,
    HOME,
    HOLD_AFTER_BYTES,
    PYTHON,
    REQUIRE_PY_BLAKE3,
    REQUIRE_PY_DUCKDB,
    MECHA_PYTHON,
    BENCH_DIR,
    BENCH_KEEP,
    BENCH_RUNS,
    BENCH_ONLY,
    BENCH_PYTHON,
    BENCH_KOHYA,
    BENCH_KOHYA_SDXL,
];

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
