//! Structure and pruning validation against the catalog of the detected architecture.
//!
//! Header checks (missing keys, unexpected keys, shapes, dtypes, aliases, gaps) need no
//! data; one pass over the float tensors counts NaN and infinities by their bit patterns
//! and reads `position_ids`. Each finding has a severity: **error** (the file is broken:
//! loaders will fail or outputs will be wrong), **warning** (it works but is wasteful or
//! suspicious), **info** (worth knowing). Optional keys that pruned files drop (SDXL's last
//! text-encoder layers, `position_ids` in some savers) are never errors, so a usable pruned
//! SDXL file is not reported broken.

use serde::Serialize;

use ckpt_core::catalog::data;
use ckpt_core::catalog::detect::Variant;
use ckpt_core::catalog::{Arch, Detection, KeyCheck, Layout, canonical_key, component_of};
use ckpt_core::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_core::units;
use ckpt_read::dtype::{self, FloatFormat, ValueKind};
use ckpt_read::{Checkpoint, Dtype};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// What a finding is about: a stable id for scripts (`code`) and the key for `fix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FindingKind {
    UnknownArchitecture,
    MissingComponent,
    MissingRequired,
    Pruned,
    WrongShape,
    Ema,
    UnexpectedKeys,
    SchedulerBuffers,
    PositionIdsMissing,
    PositionIdsShape,
    PositionIdsValues,
    PositionIdsDtype,
    OldClipNames,
    Variant,
    MixedDtypes,
    ScaledFp8,
    /// Quantized per layer as ComfyUI stores it.
    QuantizedPerLayer,
    /// A GGUF file: its ggml types.
    Gguf,
    WastefulDtype,
    UnusedBytes,
    MetadataNotString,
    NonFinite,
    /// A torch pickle: what it held and how it was read.
    Pickle,
    /// The pickle names globals that are neither data nor known danger.
    PickleInertGlobals,
    /// The pickle names globals that would reach the OS under `torch.load`.
    PickleDangerous,
}

impl FindingKind {
    /// The id in `--json` output: `missing-required`, `nonfinite`, ...
    pub fn code(self) -> &'static str {
        match self {
            FindingKind::UnknownArchitecture => "unknown-architecture",
            FindingKind::MissingComponent => "missing-component",
            FindingKind::MissingRequired => "missing-required",
            FindingKind::Pruned => "pruned",
            FindingKind::WrongShape => "wrong-shape",
            FindingKind::Ema => "ema",
            FindingKind::UnexpectedKeys => "unexpected-keys",
            FindingKind::SchedulerBuffers => "scheduler-buffers",
            FindingKind::PositionIdsMissing => "position-ids-missing",
            FindingKind::PositionIdsShape => "position-ids-shape",
            FindingKind::PositionIdsValues => "position-ids-values",
            FindingKind::PositionIdsDtype => "position-ids-dtype",
            FindingKind::OldClipNames => "old-clip-names",
            FindingKind::Variant => "variant",
            FindingKind::MixedDtypes => "mixed-dtypes",
            FindingKind::ScaledFp8 => "scaled-fp8",
            FindingKind::QuantizedPerLayer => "quantized-per-layer",
            FindingKind::Gguf => "gguf",
            FindingKind::WastefulDtype => "wasteful-dtype",
            FindingKind::UnusedBytes => "unused-bytes",
            FindingKind::MetadataNotString => "metadata-not-string",
            FindingKind::NonFinite => "nonfinite",
            FindingKind::Pickle => "pickle",
            FindingKind::PickleInertGlobals => "pickle-inert-globals",
            FindingKind::PickleDangerous => "pickle-dangerous",
        }
    }
}

/// What repairs a finding. Typed, so that the library names no command-line flag: the CLI
/// says which `fix` option does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Remedy {
    /// Store every float in one format.
    StoreFloatsInOneFormat,
    /// Store floats as fp16.
    StoreFloatsAsF16,
    /// Any rewrite of the file leaves them out.
    Rewrite,
    /// Any rewrite of the file stores them as strings.
    RewriteMetadata,
    /// Take the values from a base checkpoint, or 0 without one.
    PatchNonFinite,
    /// Copy the components in from a full checkpoint.
    AddComponents,
    /// Copy the keys from a complete checkpoint.
    AddMissing,
    /// Copy the optional keys from a complete checkpoint.
    FillOptional,
    /// Take the tensors from a complete checkpoint.
    ReplaceShapes,
    DropEma,
    DropUnknown,
    DropScheduler,
    /// Insert `position_ids` as int64 0..76.
    InsertPositionIds,
    /// Reset `position_ids` to int64 0..76.
    ResetPositionIds,
    /// Write the keys under their current names.
    RenameKeys,
    /// Write the checkpoint as safetensors (`convert`).
    Convert,
}

/// One thing validation found.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub kind: FindingKind,
    pub message: String,
    /// The tensors concerned, as the file names them (missing keys: the layout's names).
    pub keys: Vec<String>,
    /// Per key, what is wrong with it (`(3 NaN, 0 Inf)`, `[320, 9] (expected [320, 4])`),
    /// where a finding says more than the name; else empty.
    pub notes: Vec<String>,
    /// Bytes the keys take in the file, where that is the point (EMA copies, unknown keys,
    /// precision beyond fp16, unused bytes).
    pub bytes: Option<u64>,
    pub remedy: Option<Remedy>,
}

impl Finding {
    fn new(severity: Severity, kind: FindingKind, message: String) -> Finding {
        Finding {
            severity,
            kind,
            message,
            keys: Vec::new(),
            notes: Vec::new(),
            bytes: None,
            remedy: None,
        }
    }

    fn keys(mut self, keys: Vec<String>) -> Finding {
        self.keys = keys;
        self
    }

    fn notes(mut self, notes: Vec<String>) -> Finding {
        self.notes = notes;
        self
    }

    fn bytes(mut self, bytes: u64) -> Finding {
        self.bytes = Some(bytes);
        self
    }

    fn remedy(mut self, remedy: Remedy) -> Finding {
        self.remedy = Some(remedy);
        self
    }

    /// The keys with their notes: `name (3 NaN, 0 Inf)`.
    pub fn annotated_keys(&self) -> Vec<String> {
        if self.notes.is_empty() {
            return self.keys.clone();
        }
        self.keys
            .iter()
            .zip(&self.notes)
            .map(|(k, n)| format!("{k} {n}"))
            .collect()
    }
}

/// The verdict on one file.
#[derive(Clone, Debug)]
pub struct ValidateReport {
    pub path: String,
    /// The detection summary.
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

    /// The finding of a kind, if there is one.
    pub fn finding(&self, kind: FindingKind) -> Option<&Finding> {
        self.findings.iter().find(|f| f.kind == kind)
    }

    /// The keys of the finding of a kind (none when there is no such finding).
    pub fn keys_of(&self, kind: FindingKind) -> &[String] {
        self.finding(kind).map_or(&[], |f| &f.keys)
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
            ckpt_core::kernels::to_f64(f, data, &mut v);
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
        if s.encoding.needs_decoding() {
            // Codes with scales: count the decoded values (a NaN scale is refused on open,
            // but block scales may still decode to infinities).
            let mut v = vec![0.0f64; s.len()];
            s.values_into(&mut v);
            let nan = v.iter().filter(|x| x.is_nan()).count() as u64;
            let inf = v.iter().filter(|x| x.is_infinite()).count() as u64;
            return Ok((nan, inf));
        }
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
                .is_some_and(|t| t.is_float())
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

/// What a torch checkpoint's pickle says: how it was read, and the globals it names.
fn pickle_checks(ckpt: &Checkpoint, p: &ckpt_read::PickleInfo, f: &mut Vec<Finding>) {
    use ckpt_read::pickle::Verdict;
    let at = if p.state_dict_at.is_empty() {
        "at the top level".to_string()
    } else {
        format!("under '{}'", p.state_dict_at)
    };
    let mut message = format!(
        "a PyTorch checkpoint ({}), read without executing its pickle: {} tensors {at}",
        ckpt.provenance().id(),
        ckpt.tensors().len()
    );
    if p.copied > 0 {
        message.push_str(&format!(
            "; {} tensors could not be used in place (strided views, big-endian or compressed \
             storages) and were copied",
            p.copied
        ));
    }
    if !p.other.is_empty() {
        message.push_str("; left out of any output: ");
        let others: Vec<String> = p
            .other
            .iter()
            .map(|o| format!("{} ({})", o.key, o.what))
            .collect();
        message.push_str(&others.join(", "));
    }
    f.push(Finding::new(Severity::Info, FindingKind::Pickle, message).remedy(Remedy::Convert));
    let listed = |v: Verdict| -> Vec<String> {
        p.globals
            .iter()
            .filter(|g| g.verdict == v)
            .map(|g| format!("{} (byte {} of {})", g.dotted(), g.offset, p.stream))
            .collect()
    };
    let inert = listed(Verdict::InertUnknown);
    if !inert.is_empty() {
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::PickleInertGlobals,
                format!(
                    "the pickle names {} globals that are neither data nor tensors; ckpt-diff \
                     never calls them, but torch.load would import and run them",
                    inert.len()
                ),
            )
            .keys(inert),
        );
    }
    let dangerous = listed(Verdict::Dangerous);
    if !dangerous.is_empty() {
        f.push(
            Finding::new(
                Severity::Error,
                FindingKind::PickleDangerous,
                format!(
                    "DANGEROUS: the pickle calls {}; torch.load (and every tool built on it) \
                     would run it. ckpt-diff executed nothing; its tensors are readable, and \
                     `ckpt-diff convert` writes them to a safe .safetensors file",
                    dangerous.join(", ")
                ),
            )
            .keys(dangerous)
            .remedy(Remedy::Convert),
        );
    }
}

/// Validates `ckpt` (one data pass for NaN/Inf).
pub fn validate(
    ckpt: &Checkpoint,
    det: &Detection,
    pass: &Pass<'_>,
) -> Result<ValidateReport, PassError> {
    let mut report = validate_header(ckpt, det);
    let f = &mut report.findings;
    // Data: NaN and infinities.
    let bad = nonfinite_tensors(ckpt, pass)?;
    if !bad.is_empty() {
        let (nan, inf): (u64, u64) = bad.iter().fold((0, 0), |(a, b), (_, n, i)| (a + n, b + i));
        f.push(
            Finding::new(
                Severity::Error,
                FindingKind::NonFinite,
                format!(
                    "{} tensors hold NaN or infinite values ({nan} NaN, {inf} Inf)",
                    bad.len()
                ),
            )
            .keys(bad.iter().map(|(k, _, _)| k.clone()).collect())
            .notes(
                bad.iter()
                    .map(|(_, n, i)| format!("({n} NaN, {i} Inf)"))
                    .collect(),
            )
            .remedy(Remedy::PatchNonFinite),
        );
    }
    f.sort_by_key(|x| std::cmp::Reverse(x.severity));
    Ok(report)
}

/// The findings that need no tensor data (everything but NaN and infinities).
pub fn validate_header(ckpt: &Checkpoint, det: &Detection) -> ValidateReport {
    let mut f = Vec::new();
    if let Some(p) = ckpt.pickle() {
        pickle_checks(ckpt, p, &mut f);
    }
    match det.layout {
        Layout::Generic => f.push(Finding::new(
            Severity::Warning,
            FindingKind::UnknownArchitecture,
            format!(
                "the architecture is none the catalog knows ({}): only generic checks were made",
                Arch::ids()
            ),
        )),
        Layout::Known(arch) => {
            let keys = KeyCheck::of(ckpt, arch, det.scale);
            catalog_checks(ckpt, det, arch, &keys, &mut f);
        }
    }

    // Dtypes: mixed float formats, and bytes wasted on more precision than fp16.
    let float_tensors: Vec<_> = ckpt
        .tensors()
        .iter()
        .filter(|t| t.is_float() && !t.encoding.needs_decoding())
        .collect();
    let mut formats: Vec<String> = float_tensors.iter().map(|t| dtype::name(t.dtype)).collect();
    formats.sort();
    formats.dedup();
    if let Some(q) = ckpt.scaled_fp8() {
        f.push(Finding::new(
            Severity::Info,
            FindingKind::ScaledFp8,
            format!(
                "scaled FP8 (ComfyUI's {}): {} weights in {} with a per-tensor scale_weight; \
                 every analysis reads them multiplied by their scale",
                q.marker,
                q.scaled_weights(),
                dtype::name(q.format.dtype())
            ),
        ));
    }
    if let Some(q) = ckpt.comfy_quant() {
        let formats: Vec<String> = q
            .formats()
            .iter()
            .map(|(f, n)| format!("{n} {f}"))
            .collect();
        f.push(Finding::new(
            Severity::Info,
            FindingKind::QuantizedPerLayer,
            format!(
                "quantized per layer as ComfyUI stores it ({}); every analysis reads those \
                 layers decoded, as comfy-kitchen dequantizes them",
                formats.join(", ")
            ),
        ));
    }
    if let Some(g) = ckpt.gguf() {
        let mut types: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &g.tensors {
            *types.entry(t.ggml_type.name()).or_default() += 1;
        }
        let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        f.push(Finding::new(
            Severity::Info,
            FindingKind::Gguf,
            format!(
                "a GGUF file ({}); every analysis reads its quantized tensors decoded, as \
                 gguf-py dequantizes them, and its writers keep small and 1-D tensors in F32 \
                 on purpose",
                types.join(", ")
            ),
        ));
    }
    // A quantized file keeps norms and biases wide on purpose.
    let quantized =
        ckpt.scaled_fp8().is_some() || ckpt.comfy_quant().is_some() || ckpt.gguf().is_some();
    if formats.len() > 1 && !quantized {
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
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::MixedDtypes,
                format!(
                    "float tensors are stored in {} formats: {}",
                    formats.len(),
                    counts.join(", ")
                ),
            )
            .remedy(Remedy::StoreFloatsInOneFormat),
        );
    }
    let wide: Vec<_> = float_tensors
        .iter()
        .filter(|t| matches!(t.dtype, Dtype::F32 | Dtype::F64))
        .collect();
    let wasted: u64 = wide
        .iter()
        .map(|t| t.byte_len() as u64 - t.numel() as u64 * 2)
        .sum();
    if wasted > 0 && !wide.is_empty() && ckpt.gguf().is_none() {
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::WastefulDtype,
                format!(
                    "{} tensors are fp32/fp64: {} more than in fp16, which inference uses",
                    wide.len(),
                    units::bytes(wasted)
                ),
            )
            .bytes(wasted)
            .remedy(Remedy::StoreFloatsAsF16),
        );
    }

    // Header leftovers.
    if ckpt.gap_bytes() > 0 {
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::UnusedBytes,
                format!(
                    "{} of the data region belong to no tensor",
                    units::bytes(ckpt.gap_bytes())
                ),
            )
            .bytes(ckpt.gap_bytes())
            .remedy(Remedy::Rewrite),
        );
    }
    if !ckpt.metadata_non_string().is_empty() {
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::MetadataNotString,
                "metadata values that are not strings (the format requires strings; some loaders refuse the file)".into(),
            )
            .keys(ckpt.metadata_non_string().to_vec())
            .remedy(Remedy::RewriteMetadata),
        );
    }

    f.sort_by_key(|x| std::cmp::Reverse(x.severity));
    ValidateReport {
        path: ckpt.path().display().to_string(),
        arch: det.summary(),
        findings: f,
    }
}

/// The bytes the named tensors take.
fn bytes_of(ckpt: &Checkpoint, names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| ckpt.get(n))
        .map(|t| t.byte_len() as u64)
        .sum()
}

fn catalog_checks(
    ckpt: &Checkpoint,
    det: &Detection,
    arch: Arch,
    keys: &KeyCheck,
    f: &mut Vec<Finding>,
) {
    // Whole components absent: a component file, or a broken checkpoint.
    if !keys.absent_components.is_empty() {
        let list: Vec<&str> = keys.absent_components.iter().map(|c| c.id()).collect();
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::MissingComponent,
                format!(
                    "no {} (a full {} checkpoint has them; fine for a component file)",
                    list.join(", "),
                    arch.label()
                ),
            )
            .remedy(Remedy::AddComponents),
        );
    }
    // Keys missing from components that are present (position_ids have their own finding).
    let not_position_ids = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|k| !is_position_ids(k))
            .cloned()
            .collect()
    };
    let required = not_position_ids(&keys.missing_required);
    if !required.is_empty() {
        f.push(
            Finding::new(
                Severity::Error,
                FindingKind::MissingRequired,
                format!(
                    "{} required keys are missing from components the file has",
                    required.len()
                ),
            )
            .keys(required)
            .remedy(Remedy::AddMissing),
        );
    }
    // A release variant without some keys (Flux.1 schnell has no guidance embedding) is not
    // a pruned file.
    let released_without: Vec<&str> = arch
        .variants()
        .into_iter()
        .filter(|v| {
            det.variants
                .iter()
                .any(|d| matches!(d, Variant::Release { id, .. } if *id == v.id))
        })
        .filter_map(|v| v.absent)
        .collect();
    let optional: Vec<String> = not_position_ids(&keys.missing_optional)
        .into_iter()
        .filter(|k| !released_without.iter().any(|p| k.starts_with(p)))
        .collect();
    if !optional.is_empty() {
        f.push(
            Finding::new(
                Severity::Info,
                FindingKind::Pruned,
                format!(
                    "{} optional keys are absent (layers inference does not use, as pruned files drop them); the file is usable",
                    optional.len()
                ),
            )
            .keys(optional)
            .remedy(Remedy::FillOptional),
        );
    }
    let shapes: Vec<_> = keys
        .wrong_shape
        .iter()
        .filter(|w| !is_position_ids(&w.canonical))
        .collect();
    if !shapes.is_empty() {
        f.push(
            Finding::new(
                Severity::Error,
                FindingKind::WrongShape,
                format!(
                    "{} tensors have shapes {} does not have",
                    shapes.len(),
                    arch.label()
                ),
            )
            .keys(shapes.iter().map(|w| w.name.clone()).collect())
            .notes(
                shapes
                    .iter()
                    .map(|w| format!("{:?} (expected {:?})", w.actual, w.expected))
                    .collect(),
            )
            .remedy(Remedy::ReplaceShapes),
        );
    }
    if !keys.ema.is_empty() {
        let bytes = bytes_of(ckpt, &keys.ema);
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::Ema,
                format!(
                    "{} EMA keys ({}): a second copy of the U-Net that inference does not load",
                    keys.ema.len(),
                    units::bytes(bytes)
                ),
            )
            .keys(keys.ema.clone())
            .bytes(bytes)
            .remedy(Remedy::DropEma),
        );
    }
    if !keys.unknown.is_empty() {
        let bytes = bytes_of(ckpt, &keys.unknown);
        f.push(
            Finding::new(
                Severity::Warning,
                FindingKind::UnexpectedKeys,
                format!(
                    "{} keys {} does not have ({})",
                    keys.unknown.len(),
                    arch.label(),
                    units::bytes(bytes)
                ),
            )
            .keys(keys.unknown.clone())
            .bytes(bytes)
            .remedy(Remedy::DropUnknown),
        );
    }
    if !keys.scheduler.is_empty() {
        f.push(
            Finding::new(
                Severity::Info,
                FindingKind::SchedulerBuffers,
                format!(
                    "{} DDPM schedule buffers (harmless; loaders recompute them)",
                    keys.scheduler.len()
                ),
            )
            .keys(keys.scheduler.clone())
            .remedy(Remedy::DropScheduler),
        );
    }
    // position_ids: only for a CLIP-L that is present.
    let table = data::table(arch);
    if let Some(&key) = POSITION_IDS.iter().find(|k| table.get(k).is_some()) {
        let te_present = keys.present.contains(&component_of(key));
        let stored = ckpt
            .tensors()
            .iter()
            .find(|t| canonical_key(&t.name) == key)
            .map(|t| t.name.clone());
        match (te_present, stored) {
            (true, None) => f.push(
                Finding::new(
                    Severity::Warning,
                    FindingKind::PositionIdsMissing,
                    format!("{key} is missing: ComfyUI and recent transformers rebuild it, but the A1111 model toolkit and strict loaders fail"),
                )
                .keys(vec![key.to_string()])
                .remedy(Remedy::InsertPositionIds),
            ),
            (_, Some(name)) => {
                if let Some(p) = read_position_ids(ckpt, &name) {
                    position_findings(&p, f);
                }
            }
            _ => {}
        }
    }
    for v in &det.variants {
        let (kind, remedy) = match v {
            Variant::OldClipNames => (FindingKind::OldClipNames, Some(Remedy::RenameKeys)),
            Variant::MissingComponents(_)
            | Variant::PrunedTextEncoders
            | Variant::Ema
            | Variant::Scheduler => continue,
            _ => (FindingKind::Variant, None),
        };
        let mut finding = Finding::new(Severity::Info, kind, v.describe());
        finding.remedy = remedy;
        f.push(finding);
    }
}

/// Whether a canonical key is a CLIP-L `position_ids`.
pub fn is_position_ids(key: &str) -> bool {
    POSITION_IDS.contains(&key)
}

fn position_findings(p: &PositionIds, f: &mut Vec<Finding>) {
    let found = |severity, kind, message| {
        Finding::new(severity, kind, message)
            .keys(vec![p.key.clone()])
            .remedy(Remedy::ResetPositionIds)
    };
    if p.shape != [1, 77] {
        f.push(found(
            Severity::Error,
            FindingKind::PositionIdsShape,
            format!("{} has shape {:?}; CLIP-L expects [1, 77]", p.key, p.shape),
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
        f.push(found(
            Severity::Error,
            FindingKind::PositionIdsValues,
            format!(
                "{} is broken: {} positions truncate (A1111, toolkit) and {} round (ComfyUI) to the wrong index (first: {}); prompt tokens lose their positions",
                p.key,
                p.truncated_wrong.len(),
                p.rounded_wrong.len(),
                first.join(", ")
            ),
        ));
    } else if !matches!(p.dtype.as_str(), "I64" | "I32") {
        f.push(found(
            Severity::Warning,
            FindingKind::PositionIdsDtype,
            format!("{} is stored as {} (values are right, but a merge will drift them; loaders expect int64)", p.key, p.dtype),
        ));
    }
}
