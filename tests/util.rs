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

/// The report row of a key, written from SuperMerger's rules without the catalog.
pub fn reference_row(key: &str, depth: usize) -> String {
    if let Some(rest) = key.strip_prefix("model.diffusion_model.") {
        if rest.starts_with("time_embed.") || rest.starts_with("label_emb.") {
            return "IN00".into();
        }
        if rest.starts_with("out.") {
            return format!("OUT{:02}", depth - 1);
        }
        let re = regex::Regex::new(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\.").unwrap();
        let c = re.captures(rest).expect("a U-Net block key");
        let n: usize = c[2].parse().unwrap();
        return match &c[1] {
            "input_blocks" => format!("IN{n:02}"),
            "middle_block" => "M00".into(),
            _ => format!("OUT{n:02}"),
        };
    }
    if key.starts_with("cond_stage_model.") || key.starts_with("conditioner.embedders.0.") {
        "TE1".into()
    } else if key.starts_with("conditioner.embedders.1.") {
        "TE2".into()
    } else if key.starts_with("first_stage_model.") {
        "VAE".into()
    } else {
        "OTHER".into()
    }
}

/// The merge block of a key for block weights: its report row, or `BASE` outside the U-Net.
pub fn reference_block(key: &str, depth: usize) -> String {
    let row = reference_row(key, depth);
    if key.starts_with("model.diffusion_model.") {
        row
    } else {
        "BASE".into()
    }
}

/// Tensors by name, read independently.
pub fn reference_map(path: &Path) -> std::collections::BTreeMap<String, RefTensor> {
    read_reference(path)
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}
