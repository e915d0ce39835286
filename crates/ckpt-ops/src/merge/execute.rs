//! The last step of a merge: one pass over the inputs writes the output, while the inputs'
//! SHA-256 (for the provenance) are computed on their own threads; then the header's
//! placeholders are patched, the file synced and renamed into place.

use std::collections::HashMap;
use std::path::Path;

use super::engine::{MergeWork, OutputScale, Source, WriteCount};
use super::{InputHash, MergeError, Outcome, Planned};
use crate::cache::Cache;
use ckpt_core::pass::{Cancel, Pass, Progress, Release};
use ckpt_core::writer::OutputFile;

/// Runs a planned merge: writes its output and returns what it did.
pub fn execute(
    mut planned: Planned<'_>,
    progress: &dyn Progress,
    cancel: &Cancel,
    cache: &Cache,
) -> Result<Outcome, MergeError> {
    let started = std::time::Instant::now();
    // The outcome never reads the specs: the output file takes them.
    let specs = std::mem::take(&mut planned.specs);
    let input_paths: Vec<&Path> = planned
        .models
        .iter()
        .map(|&m| planned.inputs.models[m].path.as_path())
        .collect();
    // GGUF: the planned tensors only (the denoiser), each with its type; the provenance as
    // string KVs.
    let mut gguf_targets = None;
    let mut output = match &planned.gguf {
        Some(g) => {
            let kvs = planned
                .metadata
                .iter()
                // safetensors' `format: pt` says nothing in a GGUF file.
                .filter(|(k, _)| k != "format")
                .map(|(k, v)| (k.clone(), ckpt_read::gguf::Value::String(v.clone())))
                .collect();
            let out = crate::gguf::open_output(g, kvs, &planned.out, &input_paths)?;
            gguf_targets = Some(out.targets);
            out.file
        }
        None => OutputFile::create(&planned.out, specs, &planned.metadata, &input_paths)?,
    };

    let mut outputs = HashMap::new();
    let mut whole = Vec::new();
    let mut chunked = Vec::new();
    for mut o in planned.decisions.outputs.iter().cloned() {
        if let Some(targets) = &gguf_targets {
            let Some(&(index, ty)) = targets.get(&o.name) else {
                continue;
            };
            o.out_index = index;
            o.gguf = Some(ty);
        } else {
            o.out_index = output.index_of(&o.name).expect("every spec is in the file");
            if o.scale != OutputScale::None {
                o.scale_index = output.index_of(&ckpt_read::quant::scale_name(&o.name));
            }
            if let Source::Merge {
                quant: Some(code), ..
            } = o.source
            {
                let shape = planned
                    .pass_plan
                    .shape(&planned.pass_plan.entries()[o.entry]);
                o.quant_indices = super::engine::quant_parts(&o.name, code, shape)
                    .iter()
                    .map(|(name, _, _)| output.index_of(name).expect("every spec is in the file"))
                    .collect();
            }
        }
        match o.source {
            Source::Merge {
                per_tensor: true, ..
            } => whole.push(o.entry),
            _ => chunked.push(o.entry),
        }
        outputs.insert(o.entry, o);
    }
    // Items: per-tensor methods take whole tensors; everything else streams in pieces. A
    // merge hands every input page back as soon as it is merged, whatever the size: it
    // waits on the disk, so unmapping costs it nothing measurable, and its resident memory
    // stays its buffers (0.2 GB) instead of every input mapped (6.4 GB for three SD1.5
    // files), which is what users read in their task manager.
    let pass = Pass::new(progress)
        .cancel_on(cancel)
        .item_bytes(8 << 20)
        .release(Release::Always);
    let plan = &planned.pass_plan;
    let items = pass.items_with_whole(plan, &chunked, &whole);
    let mut count = WriteCount::default();

    // Hash the inputs whose digest is not known, on their own threads, while the merge
    // runs; one more thread writes the output.
    let hashes: Vec<Option<String>> =
        std::thread::scope(|scope| -> Result<Vec<Option<String>>, MergeError> {
            let handles: Vec<_> = planned
                .models
                .iter()
                .zip(&planned.hashes)
                .map(|(&m, h)| {
                    let m = &planned.inputs.models[m];
                    scope.spawn(move || match h {
                        None => None,
                        Some(InputHash::Known(h)) => Some(h.clone()),
                        Some(InputHash::Pending { .. }) => {
                            let h = crate::hash::sha256_checkpoint(&m.ckpt, true);
                            cache.store_sha256(&m.path, &h);
                            Some(h)
                        }
                    })
                })
                .collect();
            ckpt_core::writer::stream_pieces(&output, |tx| {
                let work = MergeWork {
                    plan: &planned.merge,
                    precision: planned.options.precision,
                    outputs,
                    out: &output,
                    writer: tx,
                };
                pass.run_items(plan, &items, &work, &mut count)
                    .map_err(MergeError::from)
            })?;
            Ok(handles
                .into_iter()
                .map(|h| h.join().expect("hashing does not panic"))
                .collect())
        })?;
    for (slot, h) in planned.hashes.iter().zip(&hashes) {
        if let (Some(InputHash::Pending { placeholder }), Some(h)) = (slot, h) {
            output.patch_header(placeholder, h)?;
        }
    }
    output.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    cache.record_rate(
        &planned.preflight.kind,
        planned.preflight.read_bytes,
        seconds,
    );
    let inputs = planned
        .models
        .iter()
        .zip(hashes)
        .map(|(&m, h)| (planned.inputs.models[m].name.clone(), h))
        .collect();
    Ok(planned.outcome(count.bytes, seconds, inputs, false))
}
