//! Repairs what `validate` reports, into a new file (inputs are never written).
//!
//! Always: broken, float, misshapen or missing CLIP-L `position_ids` become int64 0..76;
//! old CLIP key names become current ones; NaN and infinities are replaced (by the base's
//! values with `--base`, else by 0); tensors whose shape the architecture does not have are
//! taken from `--base`. On request: missing required keys (and with `fill_optional` the
//! optional ones) come from `--base`; EMA copies, unknown keys and schedule buffers are
//! dropped; floats are cast (values beyond the target's range are clamped to its largest
//! finite value rather than becoming infinite). Integer tensors keep their dtype. Metadata
//! is kept, stale embedded hashes (`sshs_*`, `modelspec.hash_sha256`) are dropped, and
//! `ckpt_diff.fixed` lists what was done.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::catalog::data::{self, Role};
use crate::catalog::detect::shape_matches;
use crate::catalog::{Detection, canonical_key, component_of};
use crate::kernels;
use crate::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use crate::reader::dtype::{self, FloatFormat};
use crate::reader::{Checkpoint, Dtype};
use crate::views::validate::{POSITION_IDS, read_position_ids};
use crate::writer::{OutputFile, Piece, TensorSpec, WriteError};

/// What to repair.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub dtype: Option<FloatFormat>,
    pub drop_ema: bool,
    pub drop_junk: bool,
    pub drop_scheduler: bool,
    /// Also copy optional keys (pruned text-encoder layers) from the base.
    pub fill_optional: bool,
    pub overwrite: bool,
}

/// Why a fix failed.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Pass(#[from] PassError),
}

/// What was done.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FixReport {
    pub output: String,
    pub actions: Vec<String>,
    /// Problems left as they were (no base to take them from).
    pub unfixed: Vec<String>,
}

/// Where an output tensor's values come from.
#[derive(Clone, Debug)]
enum From {
    /// Model 0 is the file, model 1 the base.
    Model {
        model: usize,
        cast: Option<FloatFormat>,
        patch_nonfinite: bool,
    },
    PositionIds,
}

#[derive(Clone, Debug)]
struct Out {
    entry: Option<usize>,
    spec: TensorSpec,
    from: From,
    index: usize,
}

/// Repairs `ckpt` into `out`, taking missing or broken tensors from `base`.
pub fn fix(
    ckpt: &Checkpoint,
    det: &Detection,
    base: Option<&Checkpoint>,
    out: &Path,
    opts: &Options,
    pass: &Pass<'_>,
) -> Result<FixReport, FixError> {
    if out.exists() && !opts.overwrite {
        return Err(FixError::Refused(format!(
            "'{}' exists; pass --force to replace it",
            out.display()
        )));
    }
    let arch = det.arch();
    if let (Some(b), Some(a)) = (base, arch) {
        let bd = crate::catalog::detect(b);
        if bd.arch() != Some(a) || bd.scale != det.scale {
            return Err(FixError::Refused(format!(
                "the base '{}' is not {} like the file",
                b.display_name(),
                a.label()
            )));
        }
    }
    let mut models = vec![ckpt];
    models.extend(base);
    let plan = Plan::new(models);
    let table = arch.map(data::table);
    let mut report = FixReport {
        output: out.display().to_string(),
        ..Default::default()
    };
    let mut outs: Vec<Out> = Vec::new();
    let mut renamed = 0;
    let mut dropped: HashMap<&str, usize> = HashMap::new();
    let mut added_components: std::collections::BTreeMap<&str, usize> = Default::default();
    let nonfinite: HashSet<String> = crate::views::validate::nonfinite_tensors(ckpt, pass)?
        .into_iter()
        .map(|(k, _, _)| canonical_key(&k).into_owned())
        .collect();
    let base_has = |e: &crate::pass::Entry, shape: Option<&[usize]>| -> bool {
        base.is_some()
            && plan
                .tensor(e, 1)
                .is_some_and(|t| shape.is_none_or(|s| t.shape == s))
    };

    for (ei, e) in plan.entries().iter().enumerate() {
        let key = &e.key;
        let catalog = table.and_then(|t| t.get(key));
        let mine = plan.tensor(e, 0);
        if POSITION_IDS.contains(&key.as_str()) && catalog.is_some() {
            continue; // Rebuilt below.
        }
        let Some(t) = mine else {
            // Only in the base: required keys (optional ones with --fill-optional) of
            // components the file has, and whole components of its architecture it lacks.
            let Some(k) = catalog else { continue };
            let component = component_of(key);
            let component_present = ckpt
                .tensors()
                .iter()
                .any(|x| component_of(&canonical_key(&x.name)) == component);
            let of_arch = arch.is_some_and(|a| a.components().contains(&component));
            let wanted =
                k.core && (!k.optional || opts.fill_optional) && (component_present || of_arch);
            if wanted {
                let bt = plan.tensor(e, 1).expect("only in the base");
                outs.push(out_from(
                    Some(ei),
                    key,
                    bt.dtype,
                    &bt.shape,
                    1,
                    opts.dtype,
                    false,
                ));
                if component_present {
                    report.actions.push(format!("added {key} from the base"));
                } else {
                    *added_components.entry(component.id()).or_default() += 1;
                }
            }
            continue;
        };
        if t.name != *key {
            renamed += 1;
        }
        let role = catalog.map(|k| k.role);
        let drop_reason = if t.name.starts_with("model_ema.") && opts.drop_ema {
            Some("EMA")
        } else if role == Some(Role::Scheduler) && opts.drop_scheduler {
            Some("schedule buffer")
        } else if catalog.is_none()
            && !t.name.starts_with("model_ema.")
            && arch.is_some()
            && opts.drop_junk
        {
            Some("unknown key")
        } else {
            None
        };
        if let Some(why) = drop_reason {
            *dropped.entry(why).or_default() += 1;
            continue;
        }
        let wrong_shape =
            catalog.is_some_and(|k| !shape_matches(&k.name, &k.shape, &t.shape, det.scale));
        if wrong_shape {
            let k = catalog.expect("checked");
            let good = crate::catalog::detect::scaled_shape(&k.shape, det.scale);
            if base_has(e, Some(&good)) {
                let bt = plan.tensor(e, 1).expect("checked");
                outs.push(out_from(
                    Some(ei),
                    key,
                    bt.dtype,
                    &bt.shape,
                    1,
                    opts.dtype,
                    false,
                ));
                report.actions.push(format!(
                    "replaced {key} (shape {:?}) with the base's {:?}",
                    t.shape, bt.shape
                ));
            } else {
                report.unfixed.push(format!(
                    "{key} has shape {:?}; give --base to replace it",
                    t.shape
                ));
                outs.push(out_from(
                    Some(ei),
                    key,
                    t.dtype,
                    &t.shape,
                    0,
                    opts.dtype,
                    false,
                ));
            }
            continue;
        }
        let patch = nonfinite.contains(key.as_str());
        if patch {
            let how = if base_has(e, Some(&t.shape)) {
                "the base's values"
            } else {
                "0"
            };
            report
                .actions
                .push(format!("replaced NaN/Inf values of {key} with {how}"));
        }
        outs.push(out_from(
            Some(ei),
            key,
            t.dtype,
            &t.shape,
            0,
            opts.dtype,
            patch,
        ));
    }
    for (c, n) in &added_components {
        report
            .actions
            .push(format!("added the {c} from the base ({n} keys)"));
    }
    for (why, n) in &dropped {
        report.actions.push(format!("dropped {n} {why} keys"));
    }
    if renamed > 0 {
        report
            .actions
            .push(format!("renamed {renamed} keys to their current names"));
    }
    // Required keys neither file has.
    if let Some(t) = table {
        let names: HashSet<&str> = outs.iter().map(|o| o.spec.name.as_str()).collect();
        for k in t
            .keys
            .iter()
            .filter(|k| k.core && !k.optional && !POSITION_IDS.contains(&k.name.as_str()))
        {
            let component_present = ckpt
                .tensors()
                .iter()
                .any(|x| component_of(&canonical_key(&x.name)) == component_of(&k.name));
            if component_present && !names.contains(k.name.as_str()) {
                report
                    .unfixed
                    .push(format!("{} is missing; give --base to add it", k.name));
            }
        }
    }
    // position_ids: int64 0..76 wherever a CLIP-L is present.
    if let Some(t) = table
        && let Some(&key) = POSITION_IDS.iter().find(|k| t.get(k).is_some())
    {
        let te = ckpt.tensors().iter().any(|x| {
            let k = canonical_key(&x.name);
            k.starts_with(&key[..key.find("text_model").expect("in the key")])
                && component_of(&k) == crate::catalog::Component::Te1
        });
        if te {
            let stored = ckpt
                .tensors()
                .iter()
                .find(|x| canonical_key(&x.name) == key);
            let healthy = stored
                .and_then(|s| read_position_ids(ckpt, &s.name))
                .is_some_and(|p| {
                    p.shape == [1, 77]
                        && p.truncated_wrong.is_empty()
                        && p.rounded_wrong.is_empty()
                        && p.dtype == "I64"
                });
            if !healthy {
                report.actions.push(format!(
                    "{} {key} (int64 0..76)",
                    if stored.is_some() {
                        "reset"
                    } else {
                        "inserted"
                    }
                ));
            }
            outs.push(Out {
                entry: None,
                spec: TensorSpec {
                    name: key.to_string(),
                    dtype: Dtype::I64,
                    shape: vec![1, 77],
                },
                from: From::PositionIds,
                index: 0,
            });
        }
    }
    if let Some(d) = opts.dtype {
        report
            .actions
            .push(format!("stored floats as {}", dtype::name(d.dtype())));
    }

    // Metadata: kept, stale hashes dropped, the fixes noted.
    let stale = [
        "sshs_model_hash",
        "sshs_legacy_hash",
        "modelspec.hash_sha256",
    ];
    let mut meta: Vec<(String, String)> = ckpt
        .metadata()
        .iter()
        .filter(|(k, _)| !stale.contains(&k.as_str()))
        .cloned()
        .collect();
    if ckpt
        .metadata()
        .iter()
        .any(|(k, _)| stale.contains(&k.as_str()))
    {
        report.actions.push(
            "dropped embedded hashes the changes made stale (sshs_*, modelspec.hash_sha256)".into(),
        );
    }
    meta.retain(|(k, _)| k != "ckpt_diff.fixed");
    meta.push((
        "ckpt_diff.fixed".into(),
        serde_json::to_string(&report.actions).expect("strings"),
    ));

    let specs: Vec<TensorSpec> = outs.iter().map(|o| o.spec.clone()).collect();
    let mut inputs: Vec<&Path> = vec![ckpt.path()];
    inputs.extend(base.map(|b| b.path()));
    let file = OutputFile::create(out, specs, &meta, &inputs)?;
    for o in &mut outs {
        o.index = file
            .index_of(&o.spec.name)
            .expect("every spec is in the file");
    }

    // Write: each output tensor from its source, in pieces.
    let by_entry: HashMap<usize, Out> = outs
        .iter()
        .filter_map(|o| o.entry.map(|e| (e, o.clone())))
        .collect();
    let entries: Vec<usize> = by_entry
        .keys()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let items: Vec<Item> = pass.items(&plan, &entries);
    crate::writer::stream_pieces(&file, |tx| -> Result<(), FixError> {
        for o in outs.iter().filter(|o| matches!(o.from, From::PositionIds)) {
            let bytes: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
            let _ = tx.send((o.index, 0, bytes));
        }
        let work = Work {
            outs: &by_entry,
            writer: tx,
        };
        Ok(pass.run_items(&plan, &items, &work, &mut Ignore)?)
    })?;
    file.finish()?;
    Ok(report)
}

fn out_from(
    entry: Option<usize>,
    key: &str,
    dtype_in: Dtype,
    shape: &[usize],
    model: usize,
    cast: Option<FloatFormat>,
    patch: bool,
) -> Out {
    let is_float = dtype::float_format(dtype_in).is_some();
    let cast = if is_float {
        cast.filter(|c| c.dtype() != dtype_in)
    } else {
        None
    };
    let dtype_out = cast.map(|c| c.dtype()).unwrap_or(dtype_in);
    Out {
        entry,
        spec: TensorSpec {
            name: key.to_string(),
            dtype: dtype_out,
            shape: shape.to_vec(),
        },
        from: From::Model {
            model,
            cast,
            patch_nonfinite: patch && is_float,
        },
        index: usize::MAX,
    }
}

struct Work<'a> {
    outs: &'a HashMap<usize, Out>,
    writer: std::sync::mpsc::SyncSender<Piece>,
}

struct Ignore;

impl Absorb<()> for Ignore {
    fn absorb(&mut self, _: &Plan<'_>, _: &Item, _: ()) -> Result<(), PassError> {
        Ok(())
    }
}

impl Visit for Work<'_> {
    type Partial = ();

    fn visit(
        &self,
        _: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<(), PassError> {
        let o = &self.outs[&item.entry];
        let From::Model {
            model,
            cast,
            patch_nonfinite,
        } = &o.from
        else {
            return Ok(());
        };
        let src = inputs[*model].expect("the source has the tensor");
        let bits_out = dtype::bit_size(o.spec.dtype);
        let offset = item.start * bits_out / 8;
        if cast.is_none() && !patch_nonfinite {
            let _ = self.writer.send((o.index, offset, src.bytes.to_vec()));
            return Ok(());
        }
        let fin = dtype::float_format(src.dtype).expect("casts and patches are floats");
        let mut v = vec![0.0; item.len()];
        kernels::to_f64(fin, src.bytes, &mut v);
        if *patch_nonfinite {
            // The base's values where this one is not finite (the base is model 1), else 0.
            let base: Option<Vec<f64>> = inputs
                .get(1)
                .copied()
                .flatten()
                .filter(|b| b.bytes.len() / dtype::bit_size(b.dtype) * 8 == item.len())
                .map(|b| {
                    let mut bv = vec![0.0; item.len()];
                    kernels::to_f64(
                        dtype::float_format(b.dtype).expect("float"),
                        b.bytes,
                        &mut bv,
                    );
                    bv
                });
            for (i, x) in v.iter_mut().enumerate() {
                if !x.is_finite() {
                    *x = base
                        .as_ref()
                        .map(|b| b[i])
                        .filter(|y| y.is_finite())
                        .unwrap_or(0.0);
                }
            }
        }
        let fout = cast.unwrap_or(fin);
        let max = match fout {
            FloatFormat::F16 => 65504.0,
            FloatFormat::BF16 => 3.3895313892515355e38,
            FloatFormat::F32 => f32::MAX as f64,
            _ => f64::MAX,
        };
        for x in v.iter_mut() {
            *x = x.clamp(-max, max);
        }
        let mut out = vec![0u8; v.len() * fout.size()];
        kernels::from_f64(fout, &v, &mut out);
        let _ = self.writer.send((o.index, offset, out));
        Ok(())
    }
}
