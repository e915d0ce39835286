//! Helpers: temporary folders, generated checkpoints, running the binary, and an
//! independent reader (the `safetensors` crate + `half`) for the reference computations.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ckpt_diff::catalog::Arch;
use ckpt_diff::pass::NoProgress;
use ckpt_diff::reader::dtype::FloatFormat;
use ckpt_diff::synth::{self, Layout, Synthetic};

pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a synthetic model and returns its path.
    pub fn model(&self, name: &str, layout: &Layout, model: &Synthetic) -> PathBuf {
        let p = self.path(name);
        synth::write(&p, layout, model, &[], &NoProgress).expect("synth write");
        p
    }
}

pub fn layout(arch: Arch, scale: u32, dtype: FloatFormat) -> Layout {
    Layout::new(arch, scale, dtype)
}

/// The binary under test.
pub fn ckpt_diff() -> Command {
    let mut c = Command::cargo_bin("ckpt-diff").expect("binary");
    c.env_remove("CKPT_DIFF_KERNELS");
    c
}

/// Runs the binary, expects success, returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = ckpt_diff().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "ckpt-diff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs the binary with `--json` appended and parses stdout.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&run_ok(&a)).expect("JSON output")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A float tensor read independently of ckpt-diff's reader and kernels.
pub struct RefTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `None` for integer tensors.
    pub values: Option<Vec<f64>>,
}

/// Reads every tensor with the `safetensors` crate and converts floats element by element
/// with `half`.
pub fn read_reference(path: &Path) -> Vec<RefTensor> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F16 => Some(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            Dtype::BF16 => Some(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            Dtype::F32 => Some(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
            ),
            Dtype::F64 => Some(
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            _ => None,
        };
        out.push(RefTensor {
            name,
            shape: view.shape().to_vec(),
            values,
        });
    }
    out
}
