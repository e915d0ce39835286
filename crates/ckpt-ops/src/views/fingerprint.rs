//! What `index add` stores of a model, in one read of its tensors: the component hashes and
//! toolkit metric ([`components`](super::components)) and the per-row count sketches
//! ([`sketch`](crate::sketch)), each tensor visited once by both.

use std::collections::BTreeMap;

use super::components::{Components, TensorHashes, combine, hash_tensor, whole_items};
use crate::sketch::{BUCKETS, Fingerprint, Rows, sketch_slice, sketched};
use ckpt_core::catalog::{Detection, Grouping};
use ckpt_core::pass::{Absorb, Item, Pass, PassError, Plan, Slice, Visit};
use ckpt_core::rng::counter::key_hash;
use ckpt_read::Checkpoint;

struct Work<'a> {
    det: &'a Detection,
    seed: u64,
    sketch: &'a [bool],
}

struct Partial {
    hashes: TensorHashes,
    /// (squared norm, sketch) of a float tensor.
    sketch: Option<(f64, Vec<f64>)>,
}

impl Visit for Work<'_> {
    type Partial = Partial;

    fn visit(
        &self,
        plan: &Plan<'_>,
        item: &Item,
        inputs: &[Option<Slice<'_>>],
    ) -> Result<Partial, PassError> {
        let s = inputs[0].expect("one model");
        let key = &plan.entries()[item.entry].key;
        let hashes = hash_tensor(self.det.arch(), key, &s);
        let sketch = self.sketch[item.entry].then(|| {
            let mut sk = vec![0.0f64; BUCKETS];
            let n2 = sketch_slice(self.seed, key_hash(key), 0, &s, &mut sk);
            (n2, sk)
        });
        Ok(Partial { hashes, sketch })
    }
}

struct Sums {
    row_of: Vec<usize>,
    hashes: BTreeMap<usize, TensorHashes>,
    rows: Rows,
}

impl Absorb<Partial> for Sums {
    fn absorb(&mut self, _: &Plan<'_>, item: &Item, p: Partial) -> Result<(), PassError> {
        if let Some((n2, sk)) = &p.sketch {
            self.rows
                .add(self.row_of[item.entry], item.len() as u64, *n2, sk);
        }
        self.hashes.insert(item.entry, p.hashes);
        Ok(())
    }
}

/// Component hashes and the fingerprint of `ckpt` by the rows of `grouping`, in one pass.
pub fn fingerprint(
    ckpt: &Checkpoint,
    det: &Detection,
    grouping: &Grouping,
    seed: u64,
    pass: &Pass<'_>,
) -> Result<(Components, Fingerprint), PassError> {
    let plan = Plan::new(vec![ckpt]);
    let sketch: Vec<bool> = (0..plan.entries().len())
        .map(|e| sketched(&plan, e))
        .collect();
    let mut sums = Sums {
        row_of: plan
            .entries()
            .iter()
            .map(|e| grouping.group_of(&e.key))
            .collect(),
        hashes: BTreeMap::new(),
        rows: Rows::new(grouping),
    };
    let work = Work {
        det,
        seed,
        sketch: &sketch,
    };
    pass.run_items(&plan, &whole_items(&plan), &work, &mut sums)?;
    Ok((combine(&plan, det, &sums.hashes), sums.rows.finish()))
}

/// Why a model could not be fingerprinted for the index.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("'{}': {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Open(#[from] ckpt_read::FileError),
    #[error(transparent)]
    Pass(#[from] PassError),
}

/// Size and modification time (seconds) of a file, or of every file in a folder: what the
/// index compares to tell an unchanged model.
pub fn stamp(path: &std::path::Path) -> Result<(u64, i64), EntryError> {
    let io = |source| EntryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let secs = |m: &std::fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64)
    };
    if !meta.is_dir() {
        return Ok((meta.len(), secs(&meta)));
    }
    let (mut bytes, mut latest) = (0u64, 0i64);
    for e in std::fs::read_dir(path).map_err(io)?.flatten() {
        let (b, t) = stamp(&e.path())?;
        bytes += b;
        latest = latest.max(t);
    }
    Ok((bytes, latest))
}

/// The extensions the index leaves out of a model's name (any case): the single files a
/// model is published as and named by their stem (`flux1-dev-Q8_0.gguf` is `flux1-dev-Q8_0`,
/// as `flux1-dev.safetensors` is `flux1-dev`). Pickles keep theirs: a library often holds
/// `model.ckpt` beside its `model.safetensors` conversion.
const NAMELESS_EXTENSIONS: [&str; 2] = [".safetensors", ".gguf"];

/// The name the index gives a model whose file (or folder) is called `file_name`.
pub fn model_name(file_name: &str) -> &str {
    for ext in NAMELESS_EXTENSIONS {
        let cut = file_name.len().saturating_sub(ext.len());
        if cut > 0 && file_name.is_char_boundary(cut) && file_name[cut..].eq_ignore_ascii_case(ext)
        {
            return &file_name[..cut];
        }
    }
    file_name
}

/// What the index stores for the model `ckpt` opened from `path`: its file hashes,
/// component hashes and fingerprint, in one read (the file hashes stream the mapped file on
/// their own threads while the pass visits its tensors, so each page comes from the disk
/// once).
pub fn index_entry(
    path: &std::path::Path,
    ckpt: &Checkpoint,
    det: &Detection,
    pass: &Pass<'_>,
) -> Result<crate::index::NewEntry, EntryError> {
    let (bytes, mtime) = stamp(path)?;
    let raw = if ckpt.provenance().is_one_file() {
        Some(ckpt_read::RawFile::open(path)?)
    } else {
        None
    };
    let grouping = match det.arch() {
        Some(a) => Grouping::for_arch(a),
        None => Grouping::generic(ckpt.tensors().iter().map(|t| t.name.as_str())),
    };
    let (hashes, got) = std::thread::scope(|scope| {
        let hashes = raw
            .as_ref()
            .map(|raw| scope.spawn(|| crate::hash::file_hashes(raw, &ckpt_core::pass::NoProgress)));
        let got = fingerprint(ckpt, det, &grouping, crate::sketch::SEED, pass);
        let hashes = hashes.map(|h| h.join().expect("hashing does not panic"));
        (hashes, got)
    });
    let (comps, fingerprint) = got?;
    let torch = !matches!(ckpt.provenance(), ckpt_read::Provenance::Safetensors { .. });
    let absolute = std::path::absolute(path).map_err(|source| EntryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(crate::index::NewEntry {
        record: crate::index::Record {
            path: absolute.display().to_string(),
            name: model_name(&ckpt.display_name()).to_string(),
            bytes,
            mtime,
            sha256: hashes.as_ref().map(|h| h.sha256.clone()),
            autov2: hashes.as_ref().map(|h| h.autov2.clone()),
            autov3: hashes
                .as_ref()
                .and_then(|h| if torch { None } else { h.autov3.clone() }),
            blake3: hashes.as_ref().map(|h| h.blake3.clone()),
            arch: det.arch(),
            scale: det.scale,
            container: ckpt.provenance().id().to_string(),
            components: comps
                .components
                .iter()
                .map(|c| {
                    (
                        c.component.id().to_string(),
                        c.exact.clone(),
                        c.fp16.clone(),
                    )
                })
                .collect(),
        },
        toolkit_matches: comps.metric.matches.clone(),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::model_name;

    #[test]
    fn model_names_leave_out_safetensors_and_gguf_extensions() {
        assert_eq!(model_name("ft1.safetensors"), "ft1");
        assert_eq!(model_name("flux1-dev-Q8_0.gguf"), "flux1-dev-Q8_0");
        assert_eq!(model_name("Model.GGUF"), "Model");
        assert_eq!(model_name("a.safetensors.gguf"), "a.safetensors");
        assert_eq!(model_name("v1-5.ckpt"), "v1-5.ckpt");
        assert_eq!(model_name("diffusers-folder"), "diffusers-folder");
        assert_eq!(model_name(".gguf"), ".gguf");
        assert_eq!(model_name("é.gguf"), "é");
    }
}
