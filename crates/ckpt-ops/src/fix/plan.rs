//! What `fix` will write, decided from the file's header, its validation findings, the
//! base's header and the options, before a byte is read: pure, so every rule is tested on
//! its own.
//!
//! Always: `position_ids` become int64 0..76 wherever CLIP-L is present; old key names
//! become the current ones (outputs use canonical names); NaN and infinities are replaced
//! (by the base's values where it has the tensor, else 0); misshapen tensors come from the
//! base. Missing required keys and components absent from the file come from the base;
//! optional keys too with `fill_optional`. On request EMA copies, unknown keys and schedule
//! buffers are dropped and floats cast. Metadata is kept without the hashes the changes make
//! stale, plus `ckpt_diff.fixed` listing what was done.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::views::validate::{FindingKind, POSITION_IDS, ValidateReport, is_position_ids};
use ckpt_core::catalog::data;
use ckpt_core::catalog::detect::scaled_shape;
use ckpt_core::catalog::{Arch, Component, canonical_key, component_of};
use ckpt_core::writer::TensorSpec;
use ckpt_read::comfy::{Code, ComfyQuant};
use ckpt_read::dtype::{self, FloatFormat};
use ckpt_read::quant::ScaledFp8;
use ckpt_read::{Dtype, TensorEntry};

/// What to repair beyond what is always repaired.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Store every float in this format (values beyond its range are clamped).
    pub dtype: Option<FloatFormat>,
    /// Store the denoiser's linear weights in this ComfyUI per-layer format (those its
    /// tile divides; the other floats as stored, bf16 where they were quantized).
    pub quant: Option<Code>,
    pub drop_ema: bool,
    /// Drop keys the architecture does not have.
    pub drop_unknown: bool,
    pub drop_scheduler: bool,
    /// Also copy optional keys (pruned text-encoder layers) from the base.
    pub fill_optional: bool,
    /// Replace an existing output.
    pub overwrite: bool,
}

/// The file being fixed, as the plan sees it.
pub(crate) struct Input<'a> {
    pub tensors: &'a [TensorEntry],
    /// The scaled-fp8 marker and scales, when the file is scaled.
    pub scaled_fp8: Option<&'a ScaledFp8>,
    /// ComfyUI's per-layer quantization, when the file has it.
    pub comfy: Option<&'a ComfyQuant>,
    pub metadata: &'a [(String, String)],
    pub arch: Option<Arch>,
    pub scale: u32,
    pub findings: &'a ValidateReport,
}

impl<'a> Input<'a> {
    /// The header of `ckpt`, detected as `det`, with what validation found.
    pub(crate) fn of(
        ckpt: &'a ckpt_read::Checkpoint,
        det: &ckpt_core::catalog::Detection,
        findings: &'a ValidateReport,
    ) -> Input<'a> {
        Input {
            tensors: ckpt.tensors(),
            scaled_fp8: ckpt.scaled_fp8(),
            comfy: ckpt.comfy_quant(),
            metadata: ckpt.metadata(),
            arch: det.arch(),
            scale: det.scale,
            findings,
        }
    }

    /// Its metadata less the hashes a rewrite makes stale and the key `also`.
    fn kept_metadata(&self, also: Option<&str>) -> Vec<(String, String)> {
        self.metadata
            .iter()
            .filter(|(k, _)| !STALE_METADATA.contains(&k.as_str()) && Some(k.as_str()) != also)
            .cloned()
            .collect()
    }
}

/// Notes the cast to `opts.dtype`, if any.
fn note_cast(opts: &Options, out: &mut FixPlan) {
    if let Some(d) = opts.dtype {
        out.actions
            .push(format!("stored floats as {}", dtype::name(d.dtype())));
    }
    if let Some(code) = opts.quant {
        let n = out
            .tensors
            .iter()
            .filter(|p| matches!(p.source, Source::Quantize { .. }))
            .count();
        out.actions.push(format!(
            "stored {n} linear weights of the denoiser as ComfyUI's {} (per layer)",
            code.format()
        ));
    }
}

/// Which of the two files a tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    File,
    Base,
}

impl Origin {
    /// Its model in the pass `fix` runs (the file is model 0, the base model 1).
    pub(crate) fn model(self) -> usize {
        match self {
            Origin::File => 0,
            Origin::Base => 1,
        }
    }
}

/// Where an output tensor's values come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The tensor of that canonical key in one of the files, cast and patched as said.
    Tensor {
        origin: Origin,
        cast: Option<FloatFormat>,
        /// Replace NaN and infinities (by the base's value where it has one, else 0).
        patch_nonfinite: bool,
    },
    /// int64 0..76.
    PositionIds,
    /// A tensor of the file copied byte for byte as it is stored: a scaled-fp8 marker or
    /// scale, a per-layer quantized weight's codes, scales and record.
    Raw(TensorEntry),
    /// The tensor of that canonical key in one of the files, quantized into a per-layer
    /// format; its other tensors (`parts`, by name) are written with it.
    Quantize {
        origin: Origin,
        code: Code,
        parts: Vec<String>,
    },
    /// A part of a quantized weight (a scale, a record), written with the weight.
    QuantPart,
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Its (canonical) name, in the output and in the files.
    pub spec: TensorSpec,
    pub source: Source,
}

/// A problem left as it was: what the base would have repaired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unfixed {
    /// Kept with its wrong shape.
    WrongShape { key: String, shape: Vec<usize> },
    /// A required key that neither file has.
    Missing { key: String },
}

/// Everything `fix` will write.
#[derive(Clone, Debug, PartialEq)]
pub struct FixPlan {
    pub tensors: Vec<Planned>,
    pub metadata: Vec<(String, String)>,
    /// What is done, in words (also stored as `ckpt_diff.fixed`).
    pub actions: Vec<String>,
    pub unfixed: Vec<Unfixed>,
}

/// Metadata a rewrite makes stale: hashes of the old bytes.
const STALE_METADATA: [&str; 3] = [
    "sshs_model_hash",
    "sshs_legacy_hash",
    "modelspec.hash_sha256",
];

/// The first tensor of each canonical key, in file order (a file holding both spellings of
/// a key is read by its first).
fn by_key(tensors: &[TensorEntry]) -> Vec<(String, &TensorEntry)> {
    let mut seen = HashSet::new();
    tensors
        .iter()
        .map(|t| (canonical_key(&t.name).into_owned(), t))
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

/// A tensor taken from one of the files, cast to `cast` when it is a float of another format.
/// A per-layer quantized weight is copied as stored (codes; its scales come with
/// [`comfy_quant`]) or, cast, decoded.
fn take(
    key: &str,
    from: &TensorEntry,
    origin: Origin,
    opts: &Options,
    patch: bool,
    comfy: Option<&ComfyQuant>,
) -> Vec<Planned> {
    if let Some(code) = opts.quant
        && from.is_float()
        && ckpt_core::writer::quantizable(key, &from.shape)
        && from.shape.iter().all(|d| d % code.tile() == 0)
    {
        let stored = code.stored(from.shape[0], from.shape[1]);
        let layer = key.strip_suffix(".weight").unwrap_or(key);
        let mut parts: Vec<Planned> = stored[1..]
            .iter()
            .map(|(suffix, dtype, shape)| (format!("{layer}.{suffix}"), *dtype, shape.clone()))
            .chain(std::iter::once((
                format!("{layer}{}", ckpt_read::comfy::RECORD),
                Dtype::U8,
                vec![code.record().len()],
            )))
            .map(|(name, dtype, shape)| Planned {
                spec: TensorSpec { name, dtype, shape },
                source: Source::QuantPart,
            })
            .collect();
        let weight = Planned {
            spec: TensorSpec {
                name: key.to_string(),
                dtype: stored[0].1,
                shape: stored[0].2.clone(),
            },
            source: Source::Quantize {
                origin,
                code,
                parts: parts.iter().map(|p| p.spec.name.clone()).collect(),
            },
        };
        parts.insert(0, weight);
        return parts;
    }
    let cast = match (opts.dtype, opts.quant) {
        // Quantizing, a scaled or quantized tensor left out of it is decoded.
        (None, Some(_)) if !from.encoding.is_plain() => Some(FloatFormat::BF16),
        (cast, _) => cast,
    };
    if cast.is_none()
        && let Some(stored) = comfy.and_then(|q| q.stored(&from.name))
    {
        return vec![Planned {
            spec: TensorSpec {
                name: key.to_string(),
                ..raw(stored).spec
            },
            source: Source::Raw(stored.clone()),
        }];
    }
    // Codes copied without their scales would be wrong: a block-encoded tensor not copied
    // as stored (the base's) is decoded, to bf16 unless a format is asked for.
    let cast = match from.encoding.needs_decoding() {
        true => Some(cast.unwrap_or(FloatFormat::BF16)),
        false => cast,
    };
    let is_float = from.is_float();
    // A scaled or block-encoded tensor is re-encoded even into its own dtype: its scales
    // are not written when every float is cast.
    let cast = cast.filter(|c| is_float && (c.dtype() != from.dtype || !from.encoding.is_plain()));
    vec![Planned {
        spec: TensorSpec {
            name: key.to_string(),
            dtype: cast.map(|c| c.dtype()).unwrap_or(from.dtype),
            shape: from.shape.clone(),
        },
        source: Source::Tensor {
            origin,
            cast,
            patch_nonfinite: patch && is_float,
        },
    }]
}

/// The scaled-fp8 marker and scales of `file`: copied as they are, or (when every float is
/// cast) dropped because the weights are written dequantized.
fn scaled_fp8(file: &Input<'_>, opts: &Options, out: &mut FixPlan) {
    let Some(q) = file.scaled_fp8 else { return };
    if opts.dtype.is_some() || opts.quant.is_some() {
        out.actions.push(format!(
            "dequantized the scaled fp8 weights ({} scales)",
            q.scaled_weights()
        ));
        return;
    }
    for t in &q.hidden {
        out.tensors.push(raw(t));
    }
}

/// A tensor of the file copied as it is stored, under its canonical name.
fn raw(t: &TensorEntry) -> Planned {
    Planned {
        spec: TensorSpec {
            name: canonical_key(&t.name).into_owned(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        },
        source: Source::Raw(t.clone()),
    }
}

/// ComfyUI's per-layer quantization of `file`: its scales and records copied as they are
/// (the weights' codes are copied by [`take`]), or dropped when every float is cast, since
/// the weights are then written decoded.
fn comfy_quant(file: &Input<'_>, opts: &Options, out: &mut FixPlan) {
    let Some(q) = file.comfy else { return };
    if opts.dtype.is_some() || opts.quant.is_some() {
        let formats: Vec<String> = q
            .formats()
            .iter()
            .map(|(f, n)| format!("{n} {f}"))
            .collect();
        out.actions.push(format!(
            "decoded the per-layer quantized weights ({})",
            formats.join(", ")
        ));
        return;
    }
    for t in &q.hidden {
        out.tensors.push(raw(t));
    }
}

/// Which drop option leaves tensor `name` out, with its report order and wording.
fn dropped_as(
    opts: &Options,
    ema: &HashSet<&str>,
    scheduler: &HashSet<&str>,
    unknown: &HashSet<&str>,
    name: &str,
) -> Option<(usize, &'static str)> {
    if opts.drop_ema && ema.contains(name) {
        Some((0, "EMA"))
    } else if opts.drop_scheduler && scheduler.contains(name) {
        Some((1, "schedule buffer"))
    } else if opts.drop_unknown && unknown.contains(name) {
        Some((2, "unknown key"))
    } else {
        None
    }
}

/// Decides the output of `fix` for `file`, with `base` to take tensors from.
pub(crate) fn plan(file: &Input<'_>, base: Option<&[TensorEntry]>, opts: &Options) -> FixPlan {
    let findings = file.findings;
    let canonical_set = |kind: FindingKind| -> HashSet<String> {
        findings
            .keys_of(kind)
            .iter()
            .map(|k| canonical_key(k).into_owned())
            .collect()
    };
    let nonfinite = canonical_set(FindingKind::NonFinite);
    let wrong_shape = canonical_set(FindingKind::WrongShape);
    let required = canonical_set(FindingKind::MissingRequired);
    let optional = canonical_set(FindingKind::Pruned);
    let [ema, unknown, scheduler] = droppable(findings);
    let table = file.arch.map(data::table);
    let mine = by_key(file.tensors);
    let present: HashSet<Component> = mine.iter().map(|(k, _)| component_of(k)).collect();
    let theirs: HashMap<String, &TensorEntry> =
        base.map(by_key).unwrap_or_default().into_iter().collect();
    let in_file: HashSet<&str> = mine.iter().map(|(k, _)| k.as_str()).collect();

    let mut out = FixPlan {
        tensors: Vec::new(),
        metadata: Vec::new(),
        actions: Vec::new(),
        unfixed: Vec::new(),
    };
    let mut renamed = 0;
    let mut dropped: BTreeMap<usize, (&str, usize)> = BTreeMap::new();
    let mut added_components: BTreeMap<&str, usize> = BTreeMap::new();

    for (key, t) in &mine {
        if is_position_ids(key) && table.is_some_and(|t| t.get(key).is_some()) {
            continue; // Rebuilt below.
        }
        if t.name != *key {
            renamed += 1;
        }
        let drop = dropped_as(opts, &ema, &scheduler, &unknown, &t.name);
        if let Some((order, why)) = drop {
            dropped.entry(order).or_insert((why, 0)).1 += 1;
            continue;
        }
        if wrong_shape.contains(key) {
            let k = table
                .and_then(|t| t.get(key))
                .expect("a wrong shape is a listed key");
            let good = scaled_shape(&k.shape, file.scale);
            match theirs.get(key).filter(|b| b.shape == good) {
                Some(b) => {
                    out.tensors
                        .extend(take(key, b, Origin::Base, opts, false, None));
                    out.actions.push(format!(
                        "replaced {key} (shape {:?}) with the base's {:?}",
                        t.shape, b.shape
                    ));
                }
                None => {
                    out.unfixed.push(Unfixed::WrongShape {
                        key: key.clone(),
                        shape: t.shape.clone(),
                    });
                    out.tensors
                        .extend(take(key, t, Origin::File, opts, false, file.comfy));
                }
            }
            continue;
        }
        let patch = nonfinite.contains(key);
        if patch {
            let how = if theirs.get(key).is_some_and(|b| b.shape == t.shape) {
                "the base's values"
            } else {
                "0"
            };
            out.actions
                .push(format!("replaced NaN/Inf values of {key} with {how}"));
        }
        out.tensors
            .extend(take(key, t, Origin::File, opts, patch, file.comfy));
    }

    // From the base: required keys (optional ones on request) of components the file has,
    // and whole components of its architecture that it lacks.
    let absent: Vec<Component> = file
        .arch
        .map(|a| {
            a.components()
                .iter()
                .copied()
                .filter(|c| !present.contains(c))
                .collect()
        })
        .unwrap_or_default();
    if let (Some(base), Some(table)) = (base, table) {
        for (key, b) in by_key(base) {
            if in_file.contains(key.as_str()) || is_position_ids(&key) {
                continue;
            }
            let Some(k) = table.get(&key) else { continue };
            let component = component_of(&key);
            let wanted = if present.contains(&component) {
                required.contains(&key) || (opts.fill_optional && optional.contains(&key))
            } else {
                absent.contains(&component) && k.core && (!k.optional || opts.fill_optional)
            };
            if !wanted {
                continue;
            }
            out.tensors
                .extend(take(&key, b, Origin::Base, opts, false, None));
            if present.contains(&component) {
                out.actions.push(format!("added {key} from the base"));
            } else {
                *added_components.entry(component.id()).or_default() += 1;
            }
        }
    }
    for (c, n) in &added_components {
        out.actions
            .push(format!("added the {c} from the base ({n} keys)"));
    }
    for (why, n) in dropped.values() {
        out.actions.push(format!("dropped {n} {why} keys"));
    }
    if renamed > 0 {
        out.actions
            .push(format!("renamed {renamed} keys to their current names"));
    }
    let written: HashSet<&str> = out.tensors.iter().map(|p| p.spec.name.as_str()).collect();
    let missing: Vec<Unfixed> = findings
        .keys_of(FindingKind::MissingRequired)
        .iter()
        .filter(|k| !written.contains(k.as_str()))
        .map(|k| Unfixed::Missing { key: k.clone() })
        .collect();
    out.unfixed.extend(missing);

    // position_ids: int64 0..76 wherever a CLIP-L is present.
    if let Some(t) = table
        && let Some(&key) = POSITION_IDS.iter().find(|k| t.get(k).is_some())
        && present.contains(&component_of(key))
    {
        let stored = mine.iter().find(|(k, _)| k == key).map(|(_, t)| t);
        let broken = [
            FindingKind::PositionIdsShape,
            FindingKind::PositionIdsValues,
            FindingKind::PositionIdsDtype,
        ]
        .iter()
        .any(|&kind| findings.finding(kind).is_some());
        let healthy = stored.is_some_and(|s| s.dtype == Dtype::I64) && !broken;
        if !healthy {
            let verb = if stored.is_some() {
                "reset"
            } else {
                "inserted"
            };
            out.actions.push(format!("{verb} {key} (int64 0..76)"));
        }
        out.tensors.push(Planned {
            spec: TensorSpec {
                name: key.to_string(),
                dtype: Dtype::I64,
                shape: vec![1, 77],
            },
            source: Source::PositionIds,
        });
    }
    // Scaled fp8: kept with its scales, or dequantized when every float is cast.
    scaled_fp8(file, opts, &mut out);
    comfy_quant(file, opts, &mut out);
    note_cast(opts, &mut out);

    // Metadata: kept, stale hashes dropped, the fixes noted.
    out.metadata = file.kept_metadata(Some("ckpt_diff.fixed"));
    if file
        .metadata
        .iter()
        .any(|(k, _)| STALE_METADATA.contains(&k.as_str()))
    {
        out.actions.push(
            "dropped embedded hashes the changes made stale (sshs_*, modelspec.hash_sha256)".into(),
        );
    }
    out.metadata.push((
        "ckpt_diff.fixed".into(),
        serde_json::to_string(&out.actions).expect("strings"),
    ));
    out
}

/// The keys, as stored, that the drop options remove: [EMA (`drop_ema`), unexpected
/// (`drop_unknown`), scheduler buffers (`drop_scheduler`)].
fn droppable(findings: &ValidateReport) -> [HashSet<&str>; 3] {
    [
        FindingKind::Ema,
        FindingKind::UnexpectedKeys,
        FindingKind::SchedulerBuffers,
    ]
    .map(|kind| findings.keys_of(kind).iter().map(String::as_str).collect())
}

/// What `convert` writes: every tensor of `file` under its name, as stored or cast to
/// `opts.dtype`, less what the drop options name (from the header findings). Unlike
/// [`plan`], nothing is repaired: a conversion changes the container, not the weights.
pub(crate) fn conversion(file: &Input<'_>, opts: &Options) -> FixPlan {
    let findings = file.findings;
    let [ema, unknown, scheduler] = droppable(findings);
    let mut out = FixPlan {
        tensors: Vec::new(),
        metadata: Vec::new(),
        actions: Vec::new(),
        unfixed: Vec::new(),
    };
    let mut dropped: BTreeMap<usize, (&str, usize)> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut renamed = 0;
    for t in file.tensors {
        let drop = dropped_as(opts, &ema, &scheduler, &unknown, &t.name);
        if let Some((order, why)) = drop {
            dropped.entry(order).or_insert((why, 0)).1 += 1;
            continue;
        }
        // Written under the canonical name (what every reader expects), each name once.
        let key = canonical_key(&t.name).into_owned();
        if key != t.name {
            renamed += 1;
        }
        if seen.insert(key.clone()) {
            out.tensors
                .extend(take(&key, t, Origin::File, opts, false, file.comfy));
        }
    }
    if renamed > 0 {
        out.actions
            .push(format!("renamed {renamed} keys to their current names"));
    }
    scaled_fp8(file, opts, &mut out);
    comfy_quant(file, opts, &mut out);
    for (why, n) in dropped.values() {
        out.actions.push(format!("dropped {n} {why} keys"));
    }
    note_cast(opts, &mut out);
    out.metadata = file.kept_metadata(None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use crate::views::validate::{Finding, Remedy, Severity};

    fn t(name: &str, dtype: Dtype, shape: &[usize]) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            begin: 0,
            end: 0,
            encoding: Default::default(),
        }
    }

    fn report(findings: Vec<(FindingKind, Vec<&str>)>) -> ValidateReport {
        ValidateReport {
            path: "f".into(),
            arch: "SD1".into(),
            findings: findings
                .into_iter()
                .map(|(kind, keys)| Finding {
                    severity: Severity::Warning,
                    kind,
                    message: String::new(),
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                    notes: Vec::new(),
                    bytes: None,
                    remedy: Some(Remedy::Rewrite),
                })
                .collect(),
        }
    }

    const CONV: &str = "model.diffusion_model.input_blocks.0.0.weight";
    const OUT2: &str = "model.diffusion_model.out.2.weight";
    const POS: &str = "cond_stage_model.transformer.text_model.embeddings.position_ids";
    const OLD_POS_EMB: &str = "cond_stage_model.transformer.embeddings.position_embedding.weight";
    const VAE_KEY: &str = "first_stage_model.decoder.conv_in.weight";

    fn names(p: &FixPlan) -> Vec<&str> {
        p.tensors.iter().map(|t| t.spec.name.as_str()).collect()
    }

    #[test]
    fn drops_only_what_is_asked_and_always_rebuilds_position_ids() {
        let file = [
            t(CONV, Dtype::F32, &[320, 4, 3, 3]),
            t("model_ema.decay", Dtype::F32, &[]),
            t("betas", Dtype::F32, &[1000]),
            t("junk", Dtype::F32, &[3]),
            t(OLD_POS_EMB, Dtype::F32, &[77, 768]),
            t(POS, Dtype::F32, &[1, 77]),
        ];
        let findings = report(vec![
            (FindingKind::Ema, vec!["model_ema.decay"]),
            (FindingKind::SchedulerBuffers, vec!["betas"]),
            (FindingKind::UnexpectedKeys, vec!["junk"]),
            (FindingKind::PositionIdsDtype, vec![POS]),
        ]);
        let input = Input {
            tensors: &file,
            scaled_fp8: None,
            comfy: None,
            metadata: &[
                ("sshs_model_hash".into(), "x".into()),
                ("k".into(), "v".into()),
            ],
            arch: Some(arch("sd1")),
            scale: 1,
            findings: &findings,
        };
        let opts = Options {
            drop_ema: true,
            drop_unknown: true,
            dtype: Some(FloatFormat::F16),
            ..Default::default()
        };
        let p = plan(&input, None, &opts);
        let canonical_pos_emb = canonical_key(OLD_POS_EMB).into_owned();
        assert_eq!(names(&p), [CONV, "betas", canonical_pos_emb.as_str(), POS]);
        assert!(p.tensors[..3].iter().all(|t| t.spec.dtype == Dtype::F16));
        assert_eq!(p.tensors[3].source, Source::PositionIds);
        assert_eq!(p.tensors[3].spec.dtype, Dtype::I64);
        assert_eq!(
            p.actions,
            [
                "dropped 1 EMA keys",
                "dropped 1 unknown key keys",
                "renamed 1 keys to their current names",
                &format!("reset {POS} (int64 0..76)"),
                "stored floats as F16",
                "dropped embedded hashes the changes made stale (sshs_*, modelspec.hash_sha256)",
            ]
        );
        assert_eq!(p.metadata[0], ("k".to_string(), "v".to_string()));
        assert_eq!(p.metadata[1].0, "ckpt_diff.fixed");
        assert!(p.unfixed.is_empty());
    }

    #[test]
    fn the_base_repairs_shapes_values_and_gaps() {
        let file = [
            t(CONV, Dtype::F16, &[320, 9, 3, 9]),
            t(OUT2, Dtype::F16, &[4, 320, 3, 3]),
        ];
        let base = [
            t(CONV, Dtype::F16, &[320, 4, 3, 3]),
            t(OUT2, Dtype::F16, &[4, 320, 3, 3]),
            t("model.diffusion_model.out.2.bias", Dtype::F16, &[4]),
            t(VAE_KEY, Dtype::F16, &[512, 4, 3, 3]),
            t("model_ema.decay", Dtype::F32, &[]),
        ];
        let findings = report(vec![
            (FindingKind::WrongShape, vec![CONV]),
            (FindingKind::NonFinite, vec![OUT2]),
            (
                FindingKind::MissingRequired,
                vec![
                    "model.diffusion_model.out.2.bias",
                    "model.diffusion_model.out.0.bias",
                ],
            ),
        ]);
        let input = Input {
            tensors: &file,
            scaled_fp8: None,
            comfy: None,
            metadata: &[],
            arch: Some(arch("sd1")),
            scale: 1,
            findings: &findings,
        };
        let p = plan(&input, Some(&base), &Options::default());
        assert_eq!(
            names(&p),
            [CONV, OUT2, "model.diffusion_model.out.2.bias", VAE_KEY]
        );
        assert_eq!(
            p.tensors[0].source,
            Source::Tensor {
                origin: Origin::Base,
                cast: None,
                patch_nonfinite: false
            }
        );
        assert_eq!(
            p.tensors[1].source,
            Source::Tensor {
                origin: Origin::File,
                cast: None,
                patch_nonfinite: true
            }
        );
        assert_eq!(
            p.actions[..3],
            [
                format!("replaced {CONV} (shape [320, 9, 3, 9]) with the base's [320, 4, 3, 3]"),
                format!("replaced NaN/Inf values of {OUT2} with the base's values"),
                "added model.diffusion_model.out.2.bias from the base".to_string(),
            ]
        );
        // The absent VAE and CLIP come whole from the base (the EMA copy does not); what
        // neither file has is reported.
        assert_eq!(p.actions[3], "added the vae from the base (1 keys)");
        assert_eq!(
            p.unfixed,
            [Unfixed::Missing {
                key: "model.diffusion_model.out.0.bias".into()
            }]
        );
        // Without a base the shape stays and is reported; NaN become 0.
        let p = plan(&input, None, &Options::default());
        assert_eq!(
            p.unfixed[0],
            Unfixed::WrongShape {
                key: CONV.into(),
                shape: vec![320, 9, 3, 9]
            }
        );
        assert!(p.actions[0].ends_with("with 0"));
    }

    #[test]
    fn optional_keys_need_fill_optional() {
        let key = "conditioner.embedders.1.model.transformer.resblocks.31.ln_1.bias";
        let file = [t(
            "conditioner.embedders.1.model.ln_final.bias",
            Dtype::F16,
            &[1280],
        )];
        let base = [t(key, Dtype::F16, &[1280])];
        let findings = report(vec![(FindingKind::Pruned, vec![key])]);
        let input = Input {
            tensors: &file,
            scaled_fp8: None,
            comfy: None,
            metadata: &[],
            arch: Some(arch("sdxl")),
            scale: 1,
            findings: &findings,
        };
        assert_eq!(
            plan(&input, Some(&base), &Options::default()).tensors.len(),
            1
        );
        let fill = Options {
            fill_optional: true,
            ..Default::default()
        };
        let p = plan(&input, Some(&base), &fill);
        assert_eq!(names(&p)[1], key);
    }
}
