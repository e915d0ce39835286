//! Helpers: temporary folders, generated checkpoints, running the binary, and an
//! independent reader (the `safetensors` crate + `half`) for the reference computations.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ckpt_core::catalog::Arch;
use ckpt_core::pass::NoProgress;
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;

pub(crate) struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub(crate) fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a synthetic model and returns its path.
    pub(crate) fn model(&self, name: &str, layout: &Layout, model: &Synthetic) -> PathBuf {
        let p = self.path(name);
        synth::write(&p, layout, model, &[], &NoProgress, &Default::default())
            .expect("synth write");
        p
    }
}

/// The architecture `id` (tests name architectures by their catalog ids).
pub(crate) fn arch(id: &str) -> Arch {
    Arch::parse(id).unwrap_or_else(|| panic!("no architecture {id}"))
}

pub(crate) fn layout(arch: Arch, scale: u32, dtype: FloatFormat) -> Layout {
    Layout::new(arch, scale, dtype)
}

/// Says, where the test output shows it, that part of a test was skipped. Written to the
/// process's stderr directly: the test harness captures `eprintln!`, and a skip nobody sees
/// passes for a pass.
pub(crate) fn say_skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}");
}

/// The cache folder the binary under test uses: one for the test run, never the
/// developer's own.
pub(crate) fn test_cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// The binary under test.
pub(crate) fn ckpt_diff() -> Command {
    let mut c = Command::cargo_bin("ckpt-diff").expect("binary");
    c.env_remove(ckpt_read::env::KERNELS.name);
    c.env(ckpt_read::env::XDG_CACHE_HOME.name, test_cache());
    c
}

pub(crate) use crate::words::words;

/// Runs the binary, expects success, returns stdout.
pub(crate) fn run_ok(args: &[&str]) -> String {
    let out = ckpt_diff().args(args).output().expect("run");
    assert!(
        out.status.success(),
        "ckpt-diff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs the binary with `--json` appended and parses stdout.
pub(crate) fn run_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&run_ok(&a)).expect("JSON output")
}

/// The object of the JSON array `rows` whose `field` equals `value` (panics if none does).
pub(crate) fn find_row<'a, T: ?Sized>(
    rows: &'a serde_json::Value,
    field: &str,
    value: &T,
) -> &'a serde_json::Value
where
    serde_json::Value: PartialEq<T>,
{
    rows.as_array()
        .expect("a JSON array")
        .iter()
        .find(|r| r[field] == *value)
        .unwrap_or_else(|| panic!("no row with {field} = the value asked for in {rows}"))
}

/// `lineage --json`'s parents, sorted.
pub(crate) fn lineage_parents(v: &serde_json::Value) -> Vec<&str> {
    let mut parents: Vec<&str> = v["parents"]
        .as_array()
        .expect("parents")
        .iter()
        .map(|p| p.as_str().expect("a name"))
        .collect();
    parents.sort();
    parents
}

/// Asserts that `lineage --json` gives parent `name` of row group `group` the weight `want`
/// within the error bar it prints with it (plus 1e-6).
pub(crate) fn assert_lineage_weight(v: &serde_json::Value, group: &str, name: &str, want: f64) {
    let g = find_row(&v["groups"], "group", group);
    let w = g["weights"]
        .as_array()
        .expect("weights")
        .iter()
        .find(|w| w[0] == name)
        .unwrap_or_else(|| panic!("{group}: no {name} in {g}"));
    let (got, err) = (w[1].as_f64().unwrap(), w[2].as_f64().unwrap());
    assert!(
        (got - want).abs() <= err + 1e-6,
        "{group} {name}: {got} ± {err} vs {want}"
    );
}

/// The string `field` of every object of the JSON array `rows`.
pub(crate) fn column<'a>(rows: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    rows.as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| r[field].as_str().expect("a string"))
        .collect()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A float tensor read independently of ckpt-diff's reader and kernels.
pub(crate) struct RefTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `None` for integer tensors.
    pub values: Option<Vec<f64>>,
}

impl RefTensor {
    /// A float tensor's values as float32 (what a quantizer is handed).
    pub(crate) fn f32_values(&self) -> Vec<f32> {
        let values = self.values.as_ref().expect("a float tensor");
        values.iter().map(|v| *v as f32).collect()
    }
}

/// Reads every tensor with the `safetensors` crate and converts floats element by element
/// with `half`.
pub(crate) fn read_reference(path: &Path) -> Vec<RefTensor> {
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
            Dtype::F8_E4M3 => Some(data.iter().map(|&c| decode_fp8(c, true)).collect()),
            Dtype::F8_E5M2 => Some(data.iter().map(|&c| decode_fp8(c, false)).collect()),
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

/// An FP8 code decoded from its bit fields, as the OCP FP8 spec defines them: E4M3 (the
/// "FN" variant: bias 7, no infinities, S.1111.111 is NaN) and E5M2 (bias 15, IEEE-like:
/// exponent 31 is infinity or NaN). Subnormals have exponent field 0.
pub(crate) fn decode_fp8(code: u8, e4m3: bool) -> f64 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (mbits, bias, emax) = if e4m3 { (3, 7, 15) } else { (2, 15, 31) };
    let e = ((code & 0x7f) >> mbits) as i32;
    let m = (code & ((1 << mbits) - 1)) as f64;
    let frac = m / (1 << mbits) as f64;
    if e4m3 && e == emax && m == 7.0 {
        return f64::NAN;
    }
    if !e4m3 && e == emax {
        return if m == 0.0 {
            sign * f64::INFINITY
        } else {
            f64::NAN
        };
    }
    if e == 0 {
        sign * frac * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f64.powi(e - bias)
    }
}

/// Tensors by name as a quantized file means them, read independently: for scaled FP8
/// (ComfyUI's old convention) each `X.weight` times its scalar `X.scale_weight`, the marker
/// and the scales dropped; for ComfyUI's per-layer fp8 and int8 (`X.comfy_quant`) each code
/// times its `X.weight_scale` (one, or one per row) in float32, the records and scales
/// dropped.
pub(crate) fn dequantized_map(path: &Path) -> std::collections::BTreeMap<String, RefTensor> {
    let mut map = reference_map(path);
    let scales: Vec<(String, f64)> = map
        .iter()
        .filter_map(|(k, t)| {
            let layer = k.strip_suffix(".scale_weight")?;
            Some((format!("{layer}.weight"), t.values.as_ref()?[0]))
        })
        .collect();
    for (weight, scale) in scales {
        let t = map.get_mut(&weight).expect("a weight for each scale");
        for v in t.values.as_mut().unwrap() {
            *v *= scale;
        }
    }
    let raw = raw_map(path);
    for (name, record) in &raw {
        let Some(layer) = name.strip_suffix(".comfy_quant") else {
            continue;
        };
        let conf: serde_json::Value = serde_json::from_slice(&record.data).expect("JSON record");
        let weight = &raw[format!("{layer}.weight").as_str()];
        let scale = &map[&format!("{layer}.weight_scale")];
        let scale = scale.values.as_ref().expect("float scales");
        let rows = weight.shape[0];
        let cols = weight.shape[1];
        let code = |i: usize| -> f32 {
            match conf["format"].as_str() {
                Some("int8_tensorwise") => weight.data[i] as i8 as f32,
                Some("float8_e4m3fn") => decode_fp8(weight.data[i], true) as f32,
                Some("float8_e5m2") => decode_fp8(weight.data[i], false) as f32,
                other => panic!("the test decoder reads int8 and fp8, not {other:?}"),
            }
        };
        let values = (0..rows * cols)
            .map(|i| {
                let s = if scale.len() == 1 {
                    scale[0]
                } else {
                    scale[i / cols]
                };
                (code(i) * s as f32) as f64
            })
            .collect();
        map.insert(
            format!("{layer}.weight"),
            RefTensor {
                name: format!("{layer}.weight"),
                shape: weight.shape.clone(),
                values: Some(values),
            },
        );
    }
    map.retain(|k, _| {
        !k.ends_with(".scale_weight")
            && !k.ends_with(".scale_input")
            && !k.ends_with("scaled_fp8")
            && !k.ends_with(".comfy_quant")
            && !k.ends_with(".weight_scale")
            && !k.ends_with(".input_scale")
    });
    map
}

/// ComfyUI's per-layer int8 of a file, written here independently of ckpt-diff: every 2-D
/// float `.weight` whose name `pick` accepts becomes int8 codes with a float32 scale per row
/// (`per_row`) or one for the tensor, `round(x / scale)` half to even, `scale =
/// max(amax / 127, 1e-30)` as comfy-kitchen's quantizer computes it, and a `.comfy_quant`
/// record `{"format": "int8_tensorwise"}`.
pub(crate) fn comfy_int8(src: &Path, dst: &Path, per_row: bool, pick: impl Fn(&str) -> bool) {
    let values = reference_map(src);
    rewrite(src, dst, |tensors| {
        let mut extra = Vec::new();
        for t in tensors.iter_mut() {
            let Some(v) = values[&t.name].values.as_ref() else {
                continue;
            };
            if t.shape.len() != 2 || !t.name.ends_with(".weight") || !pick(&t.name) {
                continue;
            }
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let groups = if per_row { rows } else { 1 };
            let per = rows * cols / groups;
            let mut codes = Vec::with_capacity(rows * cols);
            let mut scales = Vec::with_capacity(groups);
            for g in v.chunks(per) {
                let amax = g.iter().fold(0f32, |m, x| m.max((*x as f32).abs()));
                let scale = (amax / 127.0).max(1e-30);
                scales.push(scale);
                codes.extend(g.iter().map(|x| {
                    ((*x as f32) / scale).round_ties_even().clamp(-128.0, 127.0) as i8 as u8
                }));
            }
            let layer = t.name.strip_suffix(".weight").unwrap().to_string();
            t.dtype = "I8".into();
            t.data = codes;
            extra.push(RawTensor {
                name: format!("{layer}.weight_scale"),
                dtype: "F32".into(),
                shape: if per_row { vec![rows, 1] } else { vec![] },
                data: scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
            extra.push(RawTensor {
                name: format!("{layer}.comfy_quant"),
                dtype: "U8".into(),
                shape: vec![29],
                data: br#"{"format": "int8_tensorwise"}"#.to_vec(),
            });
        }
        tensors.extend(extra);
    });
}

/// The report row of a Flux / SD3 key, from the layouts' naming (not from the catalog):
/// numbered double, single and joint blocks; `final_layer` is OUT; the diffuser's other
/// modules (embedders, Chroma's modulation network) are IN.
pub(crate) fn reference_dit_row(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("model.diffusion_model.") {
        let re =
            regex::Regex::new(r"^(double_blocks|single_blocks|joint_blocks)\.(\d+)\.").unwrap();
        if let Some(c) = re.captures(rest) {
            let n: usize = c[2].parse().unwrap();
            let letter = &c[1][..1].to_ascii_uppercase();
            return format!("{letter}{n:02}");
        }
        return if rest.starts_with("final_layer.") {
            "OUT".into()
        } else {
            "IN".into()
        };
    }
    for (prefix, row) in [
        ("text_encoders.clip_l.", "CLIP_L"),
        ("text_encoders.clip_g.", "CLIP_G"),
        ("text_encoders.t5xxl.", "T5XXL"),
        ("vae.", "VAE"),
        ("first_stage_model.", "VAE"),
    ] {
        if key.starts_with(prefix) {
            return row.into();
        }
    }
    "OTHER".into()
}

/// The merge block of a Flux / SD3 key: SuperMerger's Flux list weighs CLIP-L as `CLIP`
/// and T5 as `T5` and leaves the VAE out; ComfyUI's SD3 nodes weigh everything outside the
/// diffuser as one (`BASE`).
pub(crate) fn reference_dit_block(key: &str, flux: bool) -> Option<String> {
    let row = reference_dit_row(key);
    if key.starts_with("model.diffusion_model.") {
        return Some(row);
    }
    if flux {
        match row.as_str() {
            "CLIP_L" => Some("CLIP".into()),
            "T5XXL" => Some("T5".into()),
            _ => None,
        }
    } else {
        Some("BASE".into())
    }
}

/// The U-Net's input and output blocks (12 for SD1/SD2, 9 for SDXL), 0 for DiTs: the
/// reference's own knowledge, not the catalog's.
pub(crate) fn unet_depth(arch: Arch) -> usize {
    match arch.id() {
        "sd1" | "sd2" => 12,
        "sdxl" => 9,
        _ => 0,
    }
}

/// The release variant `synth --variant` calls `word`, in whichever architecture has it.
pub(crate) fn variant(word: &str) -> ckpt_ops::synth::Variant {
    Arch::all()
        .iter()
        .find_map(|&a| ckpt_ops::synth::Variant::named(a, word))
        .unwrap_or_else(|| panic!("no variant {word}"))
}

/// The report row of a key of `arch`, by [`reference_row`], [`reference_2026_row`] or
/// [`reference_dit_row`].
pub(crate) fn arch_row(arch: Arch, key: &str) -> String {
    if unet_depth(arch) > 0 {
        reference_row(key, unet_depth(arch))
    } else if let Some(row) = reference_2026_row(arch, key) {
        row
    } else {
        reference_dit_row(key)
    }
}

/// The report row of a key of a 2026 model, written from the issue's definitions without
/// the catalog: Qwen-Image as ComfyUI's `ModelMergeQwenImage` sliders (`norm_out` a row of
/// its own), Z-Image's embedders, refiners and layers, FLUX.2's double and single blocks
/// with the shared modulation as `MOD`; the text encoder under its component id, the VAE.
/// `None` for the older architectures.
pub(crate) fn reference_2026_row(arch: Arch, key: &str) -> Option<String> {
    let id = arch.id();
    if !["z-image", "qwen-image"].contains(&id) && !id.starts_with("flux2") {
        return None;
    }
    let Some(rest) = key.strip_prefix("model.diffusion_model.") else {
        if key.starts_with("vae.") {
            return Some("VAE".into());
        }
        let te = key.strip_prefix("text_encoders.")?.split('.').next()?;
        return Some(te.to_uppercase());
    };
    let numbered = |prefix: &str, label: &str| {
        let n: usize = rest.strip_prefix(prefix)?.split('.').next()?.parse().ok()?;
        Some(format!("{label}{n:02}"))
    };
    let row = match id {
        "qwen-image" => numbered("transformer_blocks.", "B").or_else(|| {
            [
                ("img_in.", "IMG_IN"),
                ("txt_norm.", "TXT_NORM"),
                ("txt_in.", "TXT_IN"),
                ("time_text_embed.", "TIME_TEXT_EMBED"),
                ("norm_out.", "NORM_OUT"),
                ("proj_out.", "PROJ_OUT"),
            ]
            .iter()
            .find(|(p, _)| rest.starts_with(p))
            .map(|(_, r)| r.to_string())
        }),
        "z-image" => numbered("layers.", "L")
            .or_else(|| numbered("noise_refiner.", "NR"))
            .or_else(|| numbered("context_refiner.", "CR"))
            .or_else(|| {
                [
                    ("x_embedder.", "X_EMBEDDER"),
                    ("x_pad_token", "PAD_TOKENS"),
                    ("cap_pad_token", "PAD_TOKENS"),
                    ("cap_embedder.", "CAP_EMBEDDER"),
                    ("t_embedder.", "T_EMBEDDER"),
                    ("final_layer.", "FINAL_LAYER"),
                ]
                .iter()
                .find(|(p, _)| rest.starts_with(p))
                .map(|(_, r)| r.to_string())
            }),
        _ => numbered("double_blocks.", "D")
            .or_else(|| numbered("single_blocks.", "S"))
            .or_else(|| {
                (rest.starts_with("double_stream_modulation_")
                    || rest.starts_with("single_stream_modulation."))
                .then(|| "MOD".into())
            })
            .or_else(|| {
                Some(
                    if rest.starts_with("final_layer.") {
                        "OUT"
                    } else {
                        "IN"
                    }
                    .into(),
                )
            }),
    };
    Some(row.unwrap_or_else(|| panic!("{id}: no row for {key}")))
}

/// The component id of a report row (the denoiser's blocks are `unet` or `diffuser`).
pub(crate) fn row_component(arch: Arch, row: &str) -> &'static str {
    match row {
        "TE1" => "te1",
        "TE2" => "te2",
        "CLIP_L" => "clip_l",
        "CLIP_G" => "clip_g",
        "T5XXL" => "t5xxl",
        "QWEN3_4B" => "qwen3_4b",
        "QWEN3_8B" => "qwen3_8b",
        "QWEN25_7B" => "qwen25_7b",
        "MISTRAL3_24B" => "mistral3_24b",
        "VAE" => "vae",
        "OTHER" => "other",
        _ if unet_depth(arch) > 0 => "unet",
        _ => "diffuser",
    }
}

/// The report row of a key, written from SuperMerger's rules without the catalog.
pub(crate) fn reference_row(key: &str, depth: usize) -> String {
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
pub(crate) fn reference_block(key: &str, depth: usize) -> String {
    let row = reference_row(key, depth);
    if key.starts_with("model.diffusion_model.") {
        row
    } else {
        "BASE".into()
    }
}

/// Tensors by name, read independently.
pub(crate) fn reference_map(path: &Path) -> std::collections::BTreeMap<String, RefTensor> {
    read_reference(path)
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// A tensor to write with [`write_raw`].
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Writes a safetensors file by hand, tensors in the given order (independent of the
/// project's writer), with optional metadata and header padding.
pub(crate) fn write_raw(
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
pub(crate) fn read_raw(path: &Path) -> (Vec<RawTensor>, Vec<(String, String)>) {
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

/// Every tensor of a file by name (read with the `safetensors` crate).
pub(crate) fn raw_map(path: &Path) -> std::collections::BTreeMap<String, RawTensor> {
    read_raw(path)
        .0
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// Rewrites `src` into `dst` after `edit` changes the tensor list.
pub(crate) fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let (mut tensors, metadata) = read_raw(src);
    edit(&mut tensors);
    let meta: Vec<(&str, &str)> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    write_raw(dst, &tensors, &meta, 0);
}

/// Writes a synthetic family with the binary (`synth family`: a base, `finetunes`
/// fine-tunes and merges of them with known recipes, family.json) into the folder `fam`.
pub(crate) fn synth_family(fam: &Path, arch: &str, scale: u32, seed: u64, finetunes: usize) {
    let (scale, seed, finetunes) = (scale.to_string(), seed.to_string(), finetunes.to_string());
    run_ok(&words(
        "synth family {} --arch {} --scale {} --seed {} --finetunes {} -q",
        &[s(fam), arch, &scale, &seed, &finetunes],
    ));
}

/// The path of a synthetic family's member `name` (`base`, `ft1`, `ws-ft1-ft2`, ...).
pub(crate) fn member(fam: &Path, name: &str) -> String {
    s(&fam.join(format!("{name}.safetensors"))).to_string()
}

/// Runs the binary and returns (exit code, stdout, stderr).
pub(crate) fn run_code(args: &[&str]) -> (i32, String, String) {
    let out = ckpt_diff().args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bakes `lora` into `base` at strength 1 (a `merge` recipe, f32 output): the output's path.
pub(crate) fn bake(dir: &Dir, base: &Path, lora: &Path, name: &str) -> PathBuf {
    let recipe = dir.path(&format!("{name}.recipe"));
    std::fs::write(
        &recipe,
        format!(
            "M = \"{}\"\nL = \"{}\"\nOUT = M + lora(L)\n",
            s(base),
            s(lora)
        ),
    )
    .unwrap();
    let out = dir.path(&format!("{name}.baked.safetensors"));
    run_ok(&["merge", s(&recipe), "-o", s(&out), "-q", "--dtype", "f32"]);
    out
}
