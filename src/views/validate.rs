//! Structure and pruning validation against the catalog of the detected architecture.
//!
//! Header checks (missing keys, unexpected keys, shapes, dtypes, aliases, gaps) need no
//! data; one pass over the float tensors counts NaN and infinities by their bit patterns
//! and reads `position_ids`. Each finding has a severity: **error** (the file is broken:
//! loaders will fail or outputs will be wrong), **warning** (it works but is wasteful or
//! suspicious), **info** (worth knowing). Optional keys that pruned files drop (SDXL's last
//! text-encoder layers, `position_ids` in some savers) are never errors, so a usable pruned
//! SDXL file is not reported broken.

use std::collections::HashSet;

use serde::Serialize;

use crate::catalog::data::{self, Role};
use crate::catalog::detect::{Variant, scaled_shape, shape_matches};
use crate::catalog::{Arch, Component, Detection, Layout, canonical_key, component_of};
use crate::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use crate::reader::dtype::{self, FloatFormat, ValueKind};
use crate::reader::{Checkpoint, Dtype};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One thing validation found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable id: `missing-required`, `nonfinite`, `position-ids-values`, ...
    pub code: &'static str,
    pub message: String,
    /// The keys concerned (all of them).
    pub keys: Vec<String>,
    /// How to fix it, when ckpt-diff can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The verdict on one file.
#[derive(Clone, Debug, Serialize)]
pub struct ValidateReport {
    pub path: String,
    pub arch: String,
    pub findings: Vec<Finding>,
}

impl ValidateReport {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// 0 clean (infos only), 1 warnings, 2 errors.
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Some(Severity::Error) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        }
    }
}

/// The CLIP-L `position_ids` keys (SD1 and SDXL), canonical names.
pub const POSITION_IDS: [&str; 2] = [
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
];

/// What a `position_ids` tensor holds, compared with 0..76.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PositionIds {
    pub key: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Indices i where trunc(value) != i (what A1111 and the toolkit see).
    pub truncated_wrong: Vec<usize>,
    /// Indices i where round(value) != i (what ComfyUI sees).
    pub rounded_wrong: Vec<usize>,
    /// Values are exact integers.
    pub exact: bool,
}

/// Reads a `position_ids` tensor (any dtype) and compares it with 0..76.
pub fn read_position_ids(ckpt: &Checkpoint, name: &str) -> Option<PositionIds> {
    let t = ckpt.get(name)?;
    let data = ckpt.data(t);
    let values: Vec<f64> = match (dtype::value_kind(t.dtype), t.dtype) {
        (ValueKind::Float(f), _) => {
            let mut v = vec![0.0; t.numel()];
            crate::kernels::to_f64(f, data, &mut v);
            v
        }
        (_, Dtype::I64) => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
            .collect(),
        (_, Dtype::I32) => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as f64)
            .collect(),
        _ => Vec::new(),
    };
    let truncated_wrong = values
        .iter()
        .enumerate()
        .filter(|(i, v)| v.trunc() != *i as f64)
        .map(|(i, _)| i)
        .collect();
    let rounded_wrong = values
        .iter()
        .enumerate()
        .filter(|(i, v)| v.round() != *i as f64)
        .map(|(i, _)| i)
        .collect();
    Some(PositionIds {
        key: name.to_string(),
        dtype: dtype::name(t.dtype),
        shape: t.shape.clone(),
        truncated_wrong,
        rounded_wrong,
        exact: values.iter().all(|v| v.fract() == 0.0),
    })
}

/// NaN and infinity counts of stored floats, by bit pattern.
pub fn count_nonfinite(format: FloatFormat, bytes: &[u8]) -> (u64, u64) {
    let (mut nan, mut inf) = (0u64, 0u64);
    let mut tally = |is_special: bool, mantissa_zero: bool| {
        if is_special {
            if mantissa_zero { inf += 1 } else { nan += 1 }
        }
    };
    match format {
        FloatFormat::F16 => bytes.chunks_exact(2).for_each(|c| {
            let w = u16::from_le_bytes([c[0], c[1]]);
            tally(w & 0x7c00 == 0x7c00, w & 0x03ff == 0)
        }),
        FloatFormat::BF16 => bytes.chunks_exact(2).for_each(|c| {
            let w = u16::from_le_bytes([c[0], c[1]]);
            tally(w & 0x7f80 == 0x7f80, w & 0x007f == 0)
        }),
        FloatFormat::F32 => bytes.chunks_exact(4).for_each(|c| {
            let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            tally(w & 0x7f80_0000 == 0x7f80_0000, w & 0x007f_ffff == 0)
        }),
        FloatFormat::F64 => bytes.chunks_exact(8).for_each(|c| {
            let w = u64::from_le_bytes(c.try_into().expect("8"));
            tally(
                w & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000,
                w & 0x000f_ffff_ffff_ffff == 0,
            )
        }),
        // E4M3 has no infinities: 0x7f/0xff are NaN. E5M2 is IEEE-like.
        FloatFormat::F8E4M3 => bytes.iter().for_each(|&b| tally(b & 0x7f == 0x7f, false)),
        FloatFormat::F8E5M2 => bytes
            .iter()
            .for_each(|&b| tally(b & 0x7c == 0x7c, b & 0x03 == 0)),
    }
    (nan, inf)
}

struct Scan;

impl Visit for Scan {
    type Partial = (u64, u64);

    fn visit(
        &self,
        _: &Plan<'_>,
        _: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<(u64, u64), PassError> {
        let s = inputs[0].expect("one model");
        Ok(dtype::float_format(s.dtype)
            .map(|f| count_nonfinite(f, s.bytes))
            .unwrap_or((0, 0)))
    }
}

/// Per entry: NaN and infinity counts.
#[derive(Default)]
struct NonFinite(std::collections::BTreeMap<usize, (u64, u64)>);

impl Absorb<(u64, u64)> for NonFinite {
    fn absorb(
        &mut self,
        _: &Plan<'_>,
        item: &Item,
        (nan, inf): (u64, u64),
    ) -> Result<(), PassError> {
        let e = self.0.entry(item.entry).or_default();
        e.0 += nan;
        e.1 += inf;
        Ok(())
    }
}

/// The NaN and infinity counts of every float tensor with any (key, NaN, Inf), in one pass.
pub fn nonfinite_tensors(
    ckpt: &Checkpoint,
    pass: &Pass<'_>,
) -> Result<Vec<(String, u64, u64)>, PassError> {
    let plan = Plan::new(vec![ckpt]);
    let entries: Vec<usize> = (0..plan.entries().len())
        .filter(|&e| {
            plan.tensor(&plan.entries()[e], 0)
                .is_some_and(|t| dtype::float_format(t.dtype).is_some())
        })
        .collect();
    let mut counts = NonFinite::default();
    pass.run(&plan, &entries, &Scan, &mut counts)?;
    Ok(counts
        .0
        .into_iter()
        .filter(|(_, (n, i))| n + i > 0)
        .map(|(e, (n, i))| {
            (
                plan.tensor(&plan.entries()[e], 0)
                    .expect("own tensor")
                    .name
                    .clone(),
                n,
                i,
            )
        })
        .collect())
}

fn finding(
    severity: Severity,
    code: &'static str,
    message: String,
    keys: Vec<String>,
    fix: Option<&str>,
) -> Finding {
    Finding {
        severity,
        code,
        message,
        keys,
        fix: fix.map(str::to_string),
    }
}

fn human(n: u64) -> String {
    crate::reports::bytes(n)
}

/// Validates `ckpt` (one data pass for NaN/Inf).
pub fn validate(
    ckpt: &Checkpoint,
    det: &Detection,
    pass: &Pass<'_>,
) -> Result<ValidateReport, PassError> {
    let mut f = Vec::new();
    let names: HashSet<String> = ckpt
        .tensors()
        .iter()
        .map(|t| canonical_key(&t.name).into_owned())
        .collect();
    let present: HashSet<Component> = names.iter().map(|n| component_of(n)).collect();

    match det.layout {
        Layout::Generic => f.push(finding(
            Severity::Warning,
            "unknown-architecture",
            "the architecture is not SD1, SD2 or SDXL: only generic checks were made".into(),
            vec![],
            None,
        )),
        Layout::Known(arch) => catalog_checks(ckpt, det, arch, &names, &present, &mut f),
    }

    // Dtypes: mixed float formats, and bytes wasted on more precision than fp16.
    let float_tensors: Vec<_> = ckpt
        .tensors()
        .iter()
        .filter(|t| dtype::float_format(t.dtype).is_some())
        .collect();
    let mut formats: Vec<String> = float_tensors.iter().map(|t| dtype::name(t.dtype)).collect();
    formats.sort();
    formats.dedup();
    if formats.len() > 1 {
        let counts: Vec<String> = formats
            .iter()
            .map(|d| {
                format!(
                    "{d} x{}",
                    float_tensors
                        .iter()
                        .filter(|t| dtype::name(t.dtype) == *d)
                        .count()
                )
            })
            .collect();
        f.push(finding(
            Severity::Warning,
            "mixed-dtypes",
            format!(
                "float tensors are stored in {} formats: {}",
                formats.len(),
                counts.join(", ")
            ),
            vec![],
            Some("fix --dtype f16 (or bf16, f32) stores them all in one"),
        ));
    }
    let wide: Vec<_> = float_tensors
        .iter()
        .filter(|t| matches!(t.dtype, Dtype::F32 | Dtype::F64))
        .collect();
    let wasted: u64 = wide
        .iter()
        .map(|t| t.byte_len() as u64 - t.numel() as u64 * 2)
        .sum();
    if wasted > 0 && !wide.is_empty() {
        f.push(finding(
            Severity::Warning,
            "wasteful-dtype",
            format!(
                "{} tensors are fp32/fp64: {} more than in fp16, which inference uses",
                wide.len(),
                human(wasted)
            ),
            vec![],
            Some("fix --dtype f16"),
        ));
    }

    // Header leftovers.
    if ckpt.gap_bytes() > 0 {
        f.push(finding(
            Severity::Warning,
            "unused-bytes",
            format!(
                "{} of the data region belong to no tensor",
                human(ckpt.gap_bytes())
            ),
            vec![],
            Some("fix rewrites the file without them"),
        ));
    }
    if !ckpt.metadata_non_string().is_empty() {
        f.push(finding(
            Severity::Warning,
            "metadata-not-string",
            "metadata values that are not strings (the format requires strings; some loaders refuse the file)".into(),
            ckpt.metadata_non_string().to_vec(),
            Some("fix stores them as strings"),
        ));
    }

    // Data: NaN and infinities.
    let bad = nonfinite_tensors(ckpt, pass)?;
    if !bad.is_empty() {
        let (nan, inf): (u64, u64) = bad.iter().fold((0, 0), |(a, b), (_, n, i)| (a + n, b + i));
        f.push(finding(
            Severity::Error,
            "nonfinite",
            format!(
                "{} tensors hold NaN or infinite values ({nan} NaN, {inf} Inf)",
                bad.len()
            ),
            bad.iter()
                .map(|(k, n, i)| format!("{k} ({n} NaN, {i} Inf)"))
                .collect(),
            Some("fix --base BASE takes those values from BASE (without --base they become 0)"),
        ));
    }
    f.sort_by_key(|x| std::cmp::Reverse(x.severity));
    Ok(ValidateReport {
        path: ckpt.path().display().to_string(),
        arch: det.summary(),
        findings: f,
    })
}

fn catalog_checks(
    ckpt: &Checkpoint,
    det: &Detection,
    arch: Arch,
    names: &HashSet<String>,
    present: &HashSet<Component>,
    f: &mut Vec<Finding>,
) {
    let table = data::table(arch);
    // Whole components absent: a component file, or a broken checkpoint.
    let absent: Vec<Component> = arch
        .components()
        .iter()
        .copied()
        .filter(|c| !present.contains(c))
        .collect();
    if !absent.is_empty() {
        let list: Vec<&str> = absent.iter().map(|c| c.id()).collect();
        f.push(finding(
            Severity::Warning,
            "missing-component",
            format!(
                "no {} (a full {} checkpoint has them; fine for a component file)",
                list.join(", "),
                arch.label()
            ),
            vec![],
            Some("fix --base FULL.safetensors copies them in"),
        ));
    }
    // Keys missing from components that are present.
    let mut required = Vec::new();
    let mut optional = Vec::new();
    for k in table
        .keys
        .iter()
        .filter(|k| k.core && present.contains(&component_of(&k.name)) && !names.contains(&k.name))
    {
        if POSITION_IDS.contains(&k.name.as_str()) {
            continue; // Its own finding below.
        }
        if k.optional {
            optional.push(k.name.clone())
        } else {
            required.push(k.name.clone())
        }
    }
    if !required.is_empty() {
        f.push(finding(
            Severity::Error,
            "missing-required",
            format!(
                "{} required keys are missing from components the file has",
                required.len()
            ),
            required,
            Some("fix --base BASE.safetensors copies them from a complete checkpoint"),
        ));
    }
    if !optional.is_empty() {
        f.push(finding(
            Severity::Info,
            "pruned",
            format!(
                "{} optional keys are absent (layers inference does not use, as pruned files drop them); the file is usable",
                optional.len()
            ),
            optional,
            Some("fix --base BASE --fill-optional restores them"),
        ));
    }
    // Unexpected keys.
    let mut ema = Vec::new();
    let mut sched = Vec::new();
    let mut junk = Vec::new();
    let mut shapes = Vec::new();
    let (mut ema_bytes, mut junk_bytes) = (0u64, 0u64);
    for t in ckpt.tensors() {
        let key = canonical_key(&t.name);
        if t.name.starts_with("model_ema.") {
            ema.push(t.name.clone());
            ema_bytes += t.byte_len() as u64;
            continue;
        }
        match table.get(&key) {
            Some(k) if k.role == Role::Scheduler => sched.push(t.name.clone()),
            Some(k) => {
                if !shape_matches(&k.name, &k.shape, &t.shape, det.scale)
                    && !POSITION_IDS.contains(&k.name.as_str())
                {
                    shapes.push(format!(
                        "{} {:?} (expected {:?})",
                        t.name,
                        t.shape,
                        scaled_shape(&k.shape, det.scale)
                    ));
                }
            }
            None => {
                junk.push(t.name.clone());
                junk_bytes += t.byte_len() as u64;
            }
        }
    }
    if !shapes.is_empty() {
        f.push(finding(
            Severity::Error,
            "wrong-shape",
            format!(
                "{} tensors have shapes {} does not have",
                shapes.len(),
                arch.label()
            ),
            shapes,
            Some("fix --base BASE.safetensors takes those tensors from a complete checkpoint"),
        ));
    }
    if !ema.is_empty() {
        f.push(finding(
            Severity::Warning,
            "ema",
            format!(
                "{} EMA keys ({}): a second copy of the U-Net that inference does not load",
                ema.len(),
                human(ema_bytes)
            ),
            ema,
            Some("fix --drop-ema"),
        ));
    }
    if !junk.is_empty() {
        f.push(finding(
            Severity::Warning,
            "unexpected-keys",
            format!(
                "{} keys {} does not have ({})",
                junk.len(),
                arch.label(),
                human(junk_bytes)
            ),
            junk,
            Some("fix --drop-junk"),
        ));
    }
    if !sched.is_empty() {
        f.push(finding(
            Severity::Info,
            "scheduler-buffers",
            format!(
                "{} DDPM schedule buffers (harmless; loaders recompute them)",
                sched.len()
            ),
            sched,
            Some("fix --drop-scheduler"),
        ));
    }
    // position_ids: only for a CLIP-L that is present.
    if let Some(&key) = POSITION_IDS.iter().find(|k| table.get(k).is_some()) {
        let te_present = present.contains(&Component::Te1) && arch != Arch::Sd2;
        let stored = ckpt
            .tensors()
            .iter()
            .find(|t| canonical_key(&t.name) == key)
            .map(|t| t.name.clone());
        match (te_present, stored) {
            (true, None) => f.push(finding(
                Severity::Warning,
                "position-ids-missing",
                format!("{key} is missing: ComfyUI and recent transformers rebuild it, but the A1111 model toolkit and strict loaders fail"),
                vec![key.to_string()],
                Some("fix inserts it (int64 0..76)"),
            )),
            (_, Some(name)) => {
                if let Some(p) = read_position_ids(ckpt, &name) {
                    position_findings(&p, f);
                }
            }
            _ => {}
        }
    }
    for v in &det.variants {
        let (code, severity) = match v {
            Variant::OldClipNames => ("old-clip-names", Severity::Info),
            Variant::MissingComponents(_)
            | Variant::PrunedTextEncoders
            | Variant::Ema
            | Variant::Scheduler => continue,
            _ => ("variant", Severity::Info),
        };
        let fix = (code == "old-clip-names").then_some("fix renames them to the current names");
        f.push(finding(severity, code, v.describe(), vec![], fix));
    }
}

fn position_findings(p: &PositionIds, f: &mut Vec<Finding>) {
    let fix = Some("fix resets it to int64 0..76");
    if p.shape != [1, 77] {
        f.push(finding(
            Severity::Error,
            "position-ids-shape",
            format!("{} has shape {:?}; CLIP-L expects [1, 77]", p.key, p.shape),
            vec![p.key.clone()],
            fix,
        ));
        return;
    }
    if !p.truncated_wrong.is_empty() || !p.rounded_wrong.is_empty() {
        let first: Vec<String> = p
            .truncated_wrong
            .iter()
            .take(10)
            .map(|i| i.to_string())
            .collect();
        f.push(finding(
            Severity::Error,
            "position-ids-values",
            format!(
                "{} is broken: {} positions truncate (A1111, toolkit) and {} round (ComfyUI) to the wrong index (first: {}); prompt tokens lose their positions",
                p.key,
                p.truncated_wrong.len(),
                p.rounded_wrong.len(),
                first.join(", ")
            ),
            vec![p.key.clone()],
            fix,
        ));
    } else if !matches!(p.dtype.as_str(), "I64" | "I32") {
        f.push(finding(
            Severity::Warning,
            "position-ids-dtype",
            format!("{} is stored as {} (values are right, but a merge will drift them; loaders expect int64)", p.key, p.dtype),
            vec![p.key.clone()],
            fix,
        ));
    }
}
