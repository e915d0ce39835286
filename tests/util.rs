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

/// Says, where the test output shows it, that part of a test was skipped. Written to the
/// process's stderr directly: the test harness captures `eprintln!`, and a skip nobody sees
/// passes for a pass.
pub fn say_skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}");
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

/// A tensor to write with [`write_raw`].
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Writes a safetensors file by hand, tensors in the given order (independent of the
/// project's writer), with optional metadata and header padding.
pub fn write_raw(
    path: &Path,
    tensors: &[RawTensor],
    metadata: &[(&str, &str)],
    pad_header_to: usize,
) {
    let mut header = String::from("{");
    if !metadata.is_empty() {
        let m: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::json!(k), serde_json::json!(v)))
            .collect();
        header.push_str(&format!("\"__metadata__\":{{{}}},", m.join(",")));
    }
    let mut at = 0;
    let mut parts = Vec::new();
    for t in tensors {
        parts.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            serde_json::json!(t.name),
            t.dtype,
            t.shape,
            at,
            at + t.data.len()
        ));
        at += t.data.len();
    }
    header.push_str(&parts.join(","));
    header.push('}');
    while header.len() < pad_header_to || header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for t in tensors {
        bytes.extend(&t.data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Every tensor of a file as [`RawTensor`]s (read with the `safetensors` crate), in name
/// order, with the metadata.
pub fn read_raw(path: &Path) -> (Vec<RawTensor>, Vec<(String, String)>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| RawTensor {
            name,
            dtype: v.dtype().to_string(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata: Vec<(String, String)> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.sort();
    (tensors, metadata)
}

/// Rewrites `src` into `dst` after `edit` changes the tensor list.
pub fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let (mut tensors, metadata) = read_raw(src);
    edit(&mut tensors);
    let meta: Vec<(&str, &str)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    write_raw(dst, &tensors, &meta, 0);
}

/// Runs the binary and returns (exit code, stdout, stderr).
pub fn run_code(args: &[&str]) -> (i32, String, String) {
    let out = ckpt_diff().args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
