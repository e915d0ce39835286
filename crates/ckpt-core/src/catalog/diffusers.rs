//! Diffusers folders (SD1, SD2, SDXL) read as one checkpoint under the single-file key
//! names: each component's file is read by the reader, and the renamed, fused and
//! transposed tensors are put together by [`ckpt_read::assemble`].
//!
//! The renaming follows diffusers' `convert_diffusers_to_original_stable_diffusion.py` and
//! `convert_diffusers_to_original_sdxl.py` (which sd-mecha's `sdxl-diffusers_unet_only` and
//! kohya's configs follow too), applied from the diffusers side:
//! * U-Net: `down_blocks.I.resnets.J.` is `input_blocks.(3I+J+1).0.`, attentions `.1.`,
//!   downsamplers `input_blocks.(3(I+1)).0.op.`, `up_blocks.I.resnets.J.` is
//!   `output_blocks.(3I+J).0.`, upsamplers `output_blocks.(3I+2).(1|2).`, the mid block
//!   `middle_block.{0,1,2}`, resnet parts `norm1 conv1 norm2 conv2 time_emb_proj
//!   conv_shortcut` are `in_layers.0 in_layers.2 out_layers.0 out_layers.3 emb_layers.1
//!   skip_connection`, and the embeddings and outer convolutions have fixed names;
//! * CLIP-L (SD1, SDXL's first encoder): the same names under the single file's prefix;
//! * OpenCLIP (SD2, SDXL's second encoder): HF names back to OpenCLIP's, the split
//!   `q_proj/k_proj/v_proj` fused into `in_proj_weight/bias` (rows q, k, v), and SDXL's
//!   `text_projection.weight` transposed (HF stores the linear layer, OpenCLIP the matrix);
//! * VAE: `down_blocks/up_blocks` back to `down/up` (the decoder's reversed), `mid_block`
//!   to `mid`, attention `to_q/to_k/to_v/to_out.0/group_norm` (or the older
//!   `query/key/value/proj_attn`) to `q/k/v/proj_out/norm`, their 2-D weights as 1x1 convs.
//!
//! Text encoders come under either of transformers' two namings (see [`clip_name`]):
//! transformers 4 saves `CLIPTextModel` as `text_model.encoder.layers.N...`, transformers 5
//! without the `text_model.` level (`encoder.layers.N...`, `embeddings.*`,
//! `final_layer_norm.*`); both read the same.
//!
//! Tensors that need fusing or transposing are copied once; all others are read in place
//! from their files. A tensor of a component folder that no rule maps is never read by any
//! command: it is listed, every name, in the checkpoint's notes ([`left_out`] finds them),
//! which `inspect` prints and the command line warns about.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::Arch;
use super::lora::Rows;
use super::spec::{DiffusersSpec, FolderMarker, FolderSpec, ModuleRule, RowSplit, UnetSpec};
use ckpt_read::{
    Checkpoint, FileError, Layout, Piece, Provenance, ReadError, TensorEntry, assemble, file_layout,
};

/// Why a diffusers folder cannot be read.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(
        "{component}/ has no diffusion_pytorch_model.safetensors, model.safetensors or .bin file"
    )]
    NoWeights { component: String },
    #[error("the folder is not a diffusers pipeline of an architecture ckpt-diff knows")]
    Unknown,
    /// A mistake in the catalog's data (a bug of this build).
    #[error("catalog data: {arch}: {what}")]
    Spec {
        arch: &'static str,
        what: &'static str,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Why an input cannot be opened: the reader's errors, and a diffusers folder's.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("'{}': {kind}", path.display())]
    Pipeline { path: PathBuf, kind: PipelineError },
}

/// Opens any input: a diffusers folder (renamed to the single-file layout here), or what the
/// reader opens (a safetensors or torch file, a sharded model).
pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, OpenError> {
    open_as(path, false)
}

/// [`open`], keeping a folder's tensors that no rule maps under `<folder>/<name>` (for a
/// rewrite that must not lose them: `convert --unmapped keep`) instead of leaving them out.
pub fn open_keeping_unmapped(path: impl AsRef<Path>) -> Result<Checkpoint, OpenError> {
    open_as(path, true)
}

fn open_as(path: impl AsRef<Path>, keep: bool) -> Result<Checkpoint, OpenError> {
    let path = path.as_ref();
    if path.is_dir() && is_pipeline(path) {
        return open_pipeline(path, keep).map_err(|kind| OpenError::Pipeline {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(ckpt_read::open(path)?)
}

/// Whether a folder is a diffusers pipeline: it has a component folder some architecture's
/// spec reads (`[diffusers] folders`; a `text_encoder_2/` alone is not one).
pub fn is_pipeline(dir: &Path) -> bool {
    specs().iter().any(|(_, d)| {
        d.folders
            .iter()
            .any(|f| f.folder != "text_encoder_2" && dir.join(&f.folder).is_dir())
    })
}

/// The architectures that read diffusers pipelines, in the order they are tried.
fn specs() -> Vec<(Arch, &'static DiffusersSpec)> {
    let mut v: Vec<(Arch, &'static DiffusersSpec)> = Arch::all()
        .iter()
        .filter_map(|&a| {
            let d = a.info().spec.diffusers.as_ref()?;
            (!d.folders.is_empty()).then_some((a, d))
        })
        .collect();
    v.sort_by_key(|(_, d)| d.priority.unwrap_or(u32::MAX));
    v
}

/// The weights file of one diffusers component folder (`unet/`, `vae/`, ...).
fn component_file(dir: &Path) -> Option<PathBuf> {
    const NAMES: [&str; 2] = ["diffusion_pytorch_model", "model"];
    for stem in NAMES {
        for ext in [
            "safetensors",
            "fp16.safetensors",
            "safetensors.index.json",
            "fp16.safetensors.index.json",
            "bin",
            "fp16.bin",
            "bin.index.json",
        ] {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The folders of a pipeline, each read once, in the order they are asked for.
struct Folders<'a> {
    dir: &'a Path,
    read: Vec<(String, PathBuf, Layout)>,
}

impl Folders<'_> {
    /// The layout of `folder/`'s weights (`None` when the folder is not there).
    fn get(&mut self, folder: &str) -> Result<Option<&Layout>, PipelineError> {
        if let Some(i) = self.read.iter().position(|(f, _, _)| f == folder) {
            return Ok(Some(&self.read[i].2));
        }
        let path = self.dir.join(folder);
        if !path.is_dir() {
            return Ok(None);
        }
        let Some(file) = component_file(&path) else {
            return Err(PipelineError::NoWeights {
                component: folder.to_string(),
            });
        };
        let layout = file_layout(&file).map_err(|kind| {
            ReadError::Part(Box::new(FileError {
                path: file.clone(),
                kind,
            }))
        })?;
        self.read.push((folder.to_string(), file, layout));
        Ok(Some(&self.read.last().expect("just pushed").2))
    }

    /// Whether the pipeline has what a spec's marker asks for (a text encoder's names read
    /// under either transformers naming, see [`clip_name`]).
    fn has(&mut self, m: &FolderMarker, spec: &DiffusersSpec) -> Result<bool, PipelineError> {
        let text = spec
            .folders
            .iter()
            .any(|f| f.folder == m.folder && matches!(f.names.as_str(), "clip" | "openclip"));
        Ok(match (self.get(&m.folder)?, &m.prefix) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(l), Some(p)) => l.tensors.iter().any(|t| {
                if text {
                    clip_name(&t.name).starts_with(p.as_str())
                } else {
                    t.name.starts_with(p.as_str())
                }
            }),
        })
    }
}

/// A diffusers pipeline (`unet/`, `text_encoder/`, `transformer/`, `vae/`, ...): the first
/// architecture whose markers it has, its folders renamed as that architecture's spec says.
fn open_pipeline(dir: &Path, keep_unmapped: bool) -> Result<Checkpoint, PipelineError> {
    let mut folders = Folders {
        dir,
        read: Vec::new(),
    };
    let mut chosen = None;
    for (arch, spec) in specs() {
        let mut all = true;
        for m in &spec.markers {
            all &= folders.has(m, spec)?;
        }
        if all {
            chosen = Some((arch, spec));
            break;
        }
    }
    let Some((arch, spec)) = chosen else {
        return Err(PipelineError::Unknown);
    };
    let mut parts: Vec<(&FolderSpec, PathBuf, Layout)> = Vec::new();
    for f in &spec.folders {
        if folders.get(&f.folder)?.is_none() {
            continue;
        }
        let i = folders
            .read
            .iter()
            .position(|(name, _, _)| *name == f.folder)
            .expect("just read");
        let (_, file, layout) = folders.read.swap_remove(i);
        parts.push((f, file, layout));
    }
    let mut notes: Vec<String> = parts
        .iter()
        .map(|(f, file, _)| {
            format!(
                "{}/ from {}",
                f.folder,
                file.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    let mut plan = Vec::new();
    let mut unmapped: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (part, (f, _, layout)) in parts.iter().enumerate() {
        let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        let mapped = match f.names.as_str() {
            "ldm-unet" => {
                let unet = spec.unet.as_ref().ok_or(PipelineError::Spec {
                    arch: arch.id(),
                    what: "`ldm-unet` names without [diffusers] unet",
                })?;
                map_unet(&names, unet, &f.under, part)
            }
            "clip" => map_clip_l(&names, &f.under, part),
            "openclip" => map_openclip(&names, &f.under, part, f.projection),
            "ldm-vae" => map_vae(&layout.tensors, &f.under, part),
            "modules" => {
                let known = f.known_as_is.then(|| super::data::table(arch));
                map_modules(&layout.tensors, &spec.modules, &f.under, part, known)
            }
            _ => {
                return Err(PipelineError::Spec {
                    arch: arch.id(),
                    what: "a folder's `names` is not ldm-unet, clip, openclip, ldm-vae or modules",
                });
            }
        };
        plan.extend(mapped.outs);
        if let Some(n) = mapped.note {
            notes.push(format!("{}/: {n}", f.folder));
        }
        if !mapped.unmapped.is_empty() {
            if keep_unmapped {
                for name in &mapped.unmapped {
                    plan.push(Piece::Same {
                        part,
                        name: name.clone(),
                        as_name: format!("{}/{name}", f.folder),
                        shape: None,
                    });
                }
                notes.push(format!(
                    "{}/: {} tensors no rule maps kept under '{}/<name>'",
                    f.folder,
                    mapped.unmapped.len(),
                    f.folder
                ));
            } else {
                unmapped.insert(f.folder.as_str(), mapped.unmapped);
            }
        }
    }
    for (c, names) in &unmapped {
        notes.push(left_out_note(c, names));
    }
    let layouts = parts.into_iter().map(|(_, _, l)| l).collect();
    let layout = assemble(
        layouts,
        plan,
        Provenance::Assembled { kind: "diffusers" },
        notes,
    )?;
    Ok(Checkpoint::from_layout(dir, layout)?)
}

struct Mapped {
    outs: Vec<Piece>,
    /// Tensors no rule maps: left out, and listed.
    unmapped: Vec<String>,
    /// What the reader should say about how the folder was read (a naming, a tensor
    /// dropped by rule).
    note: Option<String>,
}

/// The words that mark a note listing a folder's tensors that no rule maps.
const LEFT_OUT: &str = "that no rule maps to a single-file name; no command reads them: ";

/// The note listing `names` of `folder/`, every one of them.
fn left_out_note(folder: &str, names: &[String]) -> String {
    format!(
        "{folder}/ holds {} tensor{} {LEFT_OUT}{}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}

/// The notes of `ckpt` (a diffusers folder read by [`open`]) that list tensors of a
/// component folder no rule maps: each names the folder, the count and every tensor. Such
/// tensors are in no command's view of the model, so a caller that writes or compares it
/// must say so.
pub fn left_out(ckpt: &Checkpoint) -> impl Iterator<Item = &str> {
    ckpt.notes()
        .iter()
        .map(String::as_str)
        .filter(|n| n.contains(LEFT_OUT))
}

/// The transformers-4 name of a CLIP text model's tensor under either naming: transformers 5
/// saves `CLIPTextModel` without the `text_model.` level
/// (`encoder.layers.0.self_attn.q_proj.weight`, `embeddings.*`, `final_layer_norm.*`; its
/// `base_model_prefix` lets it load the old names), transformers 4 with it. Other names
/// (`text_projection.weight`, already prefixed ones) are returned as they are.
pub(crate) fn clip_name(name: &str) -> std::borrow::Cow<'_, str> {
    if is_flat_clip(name) {
        format!("text_model.{name}").into()
    } else {
        name.into()
    }
}

/// A name under transformers 5's `CLIPTextModel` naming (no `text_model.` level);
/// `logit_scale` is where kohya and sd-mecha keep OpenCLIP's, beside the others.
fn is_flat_clip(name: &str) -> bool {
    name == "logit_scale"
        || ["embeddings.", "encoder.", "final_layer_norm."]
            .iter()
            .any(|p| name.starts_with(p))
}

/// The note saying which transformers naming a text encoder's folder has, when it is
/// transformers 5's.
fn naming_note(names: &[&str]) -> Option<String> {
    names.iter().any(|n| is_flat_clip(n)).then(|| {
        "transformers 5 names (CLIPTextModel without the `text_model.` level), read as \
         transformers 4's"
            .to_string()
    })
}

/// `(diffusers prefix, single-file prefix)` pairs of an LDM U-Net of this structure (its
/// levels, and which levels' down and up blocks have attentions), most specific first.
pub(crate) fn unet_prefixes(unet: &UnetSpec) -> Vec<(String, String)> {
    let mut m = Vec::new();
    let levels = unet.levels;
    let down_attn = |i: usize| unet.down_attention.contains(&i);
    let up_attn = |i: usize| unet.up_attention.contains(&i);
    for i in 0..levels {
        for j in 0..2 {
            m.push((
                format!("down_blocks.{i}.resnets.{j}."),
                format!("input_blocks.{}.0.", 3 * i + j + 1),
            ));
            if down_attn(i) {
                m.push((
                    format!("down_blocks.{i}.attentions.{j}."),
                    format!("input_blocks.{}.1.", 3 * i + j + 1),
                ));
            }
        }
        for j in 0..3 {
            m.push((
                format!("up_blocks.{i}.resnets.{j}."),
                format!("output_blocks.{}.0.", 3 * i + j),
            ));
            if up_attn(i) {
                m.push((
                    format!("up_blocks.{i}.attentions.{j}."),
                    format!("output_blocks.{}.1.", 3 * i + j),
                ));
            }
        }
        if i + 1 < levels {
            m.push((
                format!("down_blocks.{i}.downsamplers.0.conv."),
                format!("input_blocks.{}.0.op.", 3 * (i + 1)),
            ));
            // The upsampler follows the resnet, and the attention where the level has one.
            let slot = if up_attn(i) { 2 } else { 1 };
            m.push((
                format!("up_blocks.{i}.upsamplers.0."),
                format!("output_blocks.{}.{slot}.", 3 * i + 2),
            ));
        }
    }
    m.push(("mid_block.attentions.0.".into(), "middle_block.1.".into()));
    m.push(("mid_block.resnets.0.".into(), "middle_block.0.".into()));
    m.push(("mid_block.resnets.1.".into(), "middle_block.2.".into()));
    m
}

const UNET_FIXED: [(&str, &str); 13] = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
];

/// A diffusers U-Net name (`down_blocks.1.attentions.0.proj_in.weight`) as the single file
/// names it after `model.diffusion_model.` (`input_blocks.4.1.proj_in.weight`), or, with
/// `to_single` false, the other way: one table read in either direction.
pub(crate) fn unet_rename(
    name: &str,
    prefixes: &[(String, String)],
    to_single: bool,
) -> Option<String> {
    fn side<'a>(to_single: bool, hf: &'a str, sd: &'a str) -> (&'a str, &'a str) {
        if to_single { (hf, sd) } else { (sd, hf) }
    }
    UNET_FIXED[..7]
        .iter()
        .find_map(|(hf, sd)| {
            let (from, to) = side(to_single, hf, sd);
            name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
        })
        .or_else(|| {
            prefixes.iter().find_map(|(hf, sd)| {
                let (from, to) = side(to_single, hf, sd);
                let rest = name.strip_prefix(from)?;
                // Inside a resnet the part names differ too.
                let rest = if hf.contains("resnets") {
                    UNET_FIXED[7..13]
                        .iter()
                        .find_map(|(h, s)| {
                            let (f, t) = side(to_single, h, s);
                            rest.strip_prefix(f).map(|r| format!("{t}{r}"))
                        })
                        .unwrap_or_else(|| rest.to_string())
                } else {
                    rest.to_string()
                };
                Some(format!("{to}{rest}"))
            })
        })
}

fn map_unet(names: &[&str], unet: &UnetSpec, under: &str, part: usize) -> Mapped {
    let prefixes = unet_prefixes(unet);
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for &name in names {
        match unet_rename(name, &prefixes, true) {
            Some(m) => outs.push(Piece::Same {
                part,
                name: name.to_string(),
                as_name: format!("{under}{m}"),
                shape: None,
            }),
            None => unmapped.push(name.to_string()),
        }
    }
    Mapped {
        outs,
        unmapped,
        note: None,
    }
}

fn map_clip_l(names: &[&str], prefix: &str, part: usize) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for &name in names {
        let hf = clip_name(name);
        if hf.starts_with("text_model.") {
            outs.push(Piece::Same {
                part,
                name: name.to_string(),
                as_name: format!("{prefix}{hf}"),
                shape: None,
            });
        } else {
            unmapped.push(name.to_string());
        }
    }
    Mapped {
        outs,
        unmapped,
        note: naming_note(names),
    }
}

/// An HF CLIP encoder layer's tensor name (after `encoder.layers.N.`) as OpenCLIP names it
/// under `transformer.resblocks.N.`, and for the split attention projections which third
/// (q, k, v) of the fused `attn.in_proj_weight`/`in_proj_bias` rows it is.
pub(crate) fn openclip_layer(tail: &str) -> (String, Option<usize>) {
    for (which, p) in ["q_proj.", "k_proj.", "v_proj."].iter().enumerate() {
        if let Some(what) = tail.strip_prefix(&format!("self_attn.{p}")) {
            return (format!("attn.in_proj_{what}"), Some(which));
        }
    }
    let tail = tail
        .replacen("self_attn.out_proj.", "attn.out_proj.", 1)
        .replacen("mlp.fc1.", "mlp.c_fc.", 1)
        .replacen("mlp.fc2.", "mlp.c_proj.", 1)
        .replacen("layer_norm1.", "ln_1.", 1)
        .replacen("layer_norm2.", "ln_2.", 1);
    (tail, None)
}

/// HF CLIP names of an OpenCLIP text tower back to OpenCLIP's.
fn map_openclip(names: &[&str], prefix: &str, part: usize, projection: bool) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    let mut qkv: BTreeMap<(usize, &str), [Option<String>; 3]> = BTreeMap::new();
    let mut dropped = Vec::new();
    for &name in names {
        if name == "text_projection.weight" && projection {
            outs.push(Piece::Transpose {
                part,
                name: name.into(),
                as_name: format!("{prefix}text_projection"),
            });
            continue;
        }
        let hf = clip_name(name);
        let Some(rest) = hf.strip_prefix("text_model.") else {
            unmapped.push(name.into());
            continue;
        };
        if let Some(layer) = rest.strip_prefix("encoder.layers.") {
            let (n, tail) = layer.split_once('.').unwrap_or((layer, ""));
            let Ok(n) = n.parse::<usize>() else {
                unmapped.push(name.into());
                continue;
            };
            let (tail, split) = openclip_layer(tail);
            if let Some(which) = split {
                let kind = if tail.ends_with("_bias") {
                    "bias"
                } else {
                    "weight"
                };
                qkv.entry((n, kind)).or_default()[which] = Some(name.into());
                continue;
            }
            outs.push(Piece::Same {
                part,
                name: name.into(),
                as_name: format!("{prefix}transformer.resblocks.{n}.{tail}"),
                shape: None,
            });
            continue;
        }
        let as_name = match rest {
            "embeddings.token_embedding.weight" => "token_embedding.weight".to_string(),
            "embeddings.position_embedding.weight" => "positional_embedding".to_string(),
            "final_layer_norm.weight" => "ln_final.weight".to_string(),
            "final_layer_norm.bias" => "ln_final.bias".to_string(),
            // Not in HF's model, but kohya and sd-mecha keep it there.
            "logit_scale" => "logit_scale".to_string(),
            // A constant buffer (0..77) older transformers saved; OpenCLIP has none.
            "embeddings.position_ids" => {
                dropped.push(name);
                continue;
            }
            _ => {
                unmapped.push(name.into());
                continue;
            }
        };
        outs.push(Piece::Same {
            part,
            name: name.into(),
            as_name: format!("{prefix}{as_name}"),
            shape: None,
        });
    }
    for ((n, kind), parts) in qkv {
        let suffix = if kind == "bias" {
            "in_proj_bias"
        } else {
            "in_proj_weight"
        };
        match parts {
            [Some(q), Some(k), Some(v)] => outs.push(Piece::Stack {
                part,
                names: vec![q, k, v],
                as_name: format!("{prefix}transformer.resblocks.{n}.attn.{suffix}"),
            }),
            other => unmapped.extend(other.into_iter().flatten()),
        }
    }
    let dropped = (!dropped.is_empty()).then(|| {
        format!(
            "{} dropped: OpenCLIP has no position_ids (a constant 0..n buffer)",
            dropped.join(", ")
        )
    });
    let note = match (naming_note(names), dropped) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    Mapped {
        outs,
        unmapped,
        note,
    }
}

fn map_vae(tensors: &[TensorEntry], under: &str, part: usize) -> Mapped {
    let shape_of: HashMap<&str, &[usize]> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let mut m: Vec<(String, String)> = Vec::new();
    for i in 0..4 {
        for j in 0..2 {
            m.push((
                format!("encoder.down_blocks.{i}.resnets.{j}."),
                format!("encoder.down.{i}.block.{j}."),
            ));
        }
        if i < 3 {
            m.push((
                format!("encoder.down_blocks.{i}.downsamplers.0."),
                format!("encoder.down.{i}.downsample."),
            ));
            m.push((
                format!("decoder.up_blocks.{i}.upsamplers.0."),
                format!("decoder.up.{}.upsample.", 3 - i),
            ));
        }
        for j in 0..3 {
            m.push((
                format!("decoder.up_blocks.{i}.resnets.{j}."),
                format!("decoder.up.{}.block.{j}.", 3 - i),
            ));
        }
    }
    for side in ["encoder", "decoder"] {
        for i in 0..2 {
            m.push((
                format!("{side}.mid_block.resnets.{i}."),
                format!("{side}.mid.block_{}.", i + 1),
            ));
        }
        m.push((
            format!("{side}.mid_block.attentions.0."),
            format!("{side}.mid.attn_1."),
        ));
    }
    const ATTN: [(&str, &str); 9] = [
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
        ("group_norm.", "norm."),
        ("query.", "q."),
        ("key.", "k."),
        ("value.", "v."),
        ("proj_attn.", "proj_out."),
    ];
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for name in tensors.iter().map(|t| t.name.as_str()) {
        let hit = m
            .iter()
            .find_map(|(hf, sd)| name.strip_prefix(hf.as_str()).map(|r| (hf, sd, r)));
        let (as_name, attention) = match hit {
            Some((hf, sd, rest)) if hf.contains("attentions") => {
                let rest = ATTN
                    .iter()
                    .find_map(|(h, s)| rest.strip_prefix(h).map(|r| format!("{s}{r}")))
                    .unwrap_or_else(|| rest.to_string());
                (format!("{sd}{rest}"), true)
            }
            Some((_, sd, rest)) => (
                format!(
                    "{sd}{}",
                    rest.replacen("conv_shortcut.", "nin_shortcut.", 1)
                ),
                false,
            ),
            None => {
                let top = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."];
                if top.iter().any(|p| name.starts_with(p)) {
                    (name.replacen("conv_norm_out.", "norm_out.", 1), false)
                } else {
                    unmapped.push(name.into());
                    continue;
                }
            }
        };
        // Attention projections are linear in diffusers and 1x1 convolutions in the file.
        let shape = shape_of
            .get(name)
            .filter(|s| attention && s.len() == 2)
            .map(|s| vec![s[0], s[1], 1, 1]);
        outs.push(Piece::Same {
            part,
            name: name.into(),
            as_name: format!("{under}{as_name}"),
            shape,
        });
    }
    Mapped {
        outs,
        unmapped,
        note: None,
    }
}

/// `pattern` (with at most one `{n}`) against a module path: `Some(n)` (`Some("")` for a
/// pattern without a number) when it matches.
fn match_pattern<'a>(pattern: &str, path: &'a str) -> Option<&'a str> {
    match pattern.split_once("{n}") {
        None => (pattern == path).then_some(""),
        Some((pre, post)) => {
            let n = path.strip_prefix(pre)?.strip_suffix(post)?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(n)
        }
    }
}

/// `pattern` with its `{n}` filled in.
fn fill(pattern: &str, n: &str) -> String {
    pattern.replace("{n}", n)
}

/// The share of the rows of a fused module that part `i` of `parts` is.
fn part_rows(split: Option<RowSplit>, i: usize, parts: usize) -> Option<Rows> {
    match split? {
        RowSplit::Thirds => Some(Rows::Third(i)),
        RowSplit::Hidden if i + 1 < parts => Some(Rows::Hidden(i)),
        RowSplit::Hidden => Some(Rows::AfterHidden(i)),
    }
}

/// Diffusers' names of a single-file module path (`double_blocks.0.img_attn.qkv`, after
/// `model.diffusion_model.`) by the spec's module rules, with the rows of a fused module
/// each name has (`None`: all of them). Modules whose halves diffusers swaps have no rows to
/// name and are left out.
pub(crate) fn module_names(rules: &[ModuleRule], path: &str) -> Vec<(String, Option<Rows>)> {
    for r in rules {
        let Some(n) = match_pattern(&r.module, path) else {
            continue;
        };
        if r.swap_halves {
            return Vec::new();
        }
        return r
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| (fill(name, n), part_rows(r.rows, i, r.names.len())))
            .collect();
    }
    Vec::new()
}

/// A diffusers DiT's tensors under the single file's names, by the spec's module rules:
/// renamed in place, split projections stacked back into their fused module, swapped halves
/// swapped back; with `known` (the architecture's layout), a tensor no rule maps whose name
/// is a key of it kept as it is.
fn map_modules(
    tensors: &[TensorEntry],
    rules: &[ModuleRule],
    under: &str,
    part: usize,
    known: Option<&super::data::ArchTable>,
) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    // (rule, number, parameter) -> the tensor of each of the rule's names.
    let mut fused: BTreeMap<(usize, String, String), Vec<Option<String>>> = BTreeMap::new();
    for t in tensors {
        let found = t.name.rsplit_once('.').and_then(|(module, param)| {
            rules.iter().enumerate().find_map(|(r, rule)| {
                rule.names
                    .iter()
                    .enumerate()
                    .find_map(|(j, name)| match_pattern(name, module).map(|n| (r, j, n, param)))
            })
        });
        let Some((r, j, n, param)) = found else {
            // No rule: kept as it is when the layout has that key (`known_as_is`).
            let as_name = format!("{under}{}", t.name);
            if known.is_some_and(|k| k.get(&as_name).is_some()) {
                outs.push(Piece::Same {
                    part,
                    name: t.name.clone(),
                    as_name,
                    shape: None,
                });
            } else {
                unmapped.push(t.name.clone());
            }
            continue;
        };
        let rule = &rules[r];
        // The single file's parameter name (`scale` where diffusers says `weight`).
        let param = rule
            .params
            .iter()
            .find(|(_, theirs)| theirs.as_str() == param)
            .map_or(param, |(ours, _)| ours.as_str());
        let as_name = format!("{under}{}.{param}", fill(&rule.module, n));
        if rule.names.len() == 1 {
            outs.push(if rule.swap_halves {
                Piece::SwapHalves {
                    part,
                    name: t.name.clone(),
                    as_name,
                }
            } else {
                Piece::Same {
                    part,
                    name: t.name.clone(),
                    as_name,
                    shape: None,
                }
            });
            continue;
        }
        fused
            .entry((r, n.to_string(), param.to_string()))
            .or_insert_with(|| vec![None; rule.names.len()])[j] = Some(t.name.clone());
    }
    for ((r, n, param), names) in fused {
        if names.iter().all(Option::is_some) {
            outs.push(Piece::Stack {
                part,
                names: names.into_iter().flatten().collect(),
                as_name: format!("{under}{}.{param}", fill(&rules[r].module, &n)),
            });
        } else {
            unmapped.extend(names.into_iter().flatten());
        }
    }
    Mapped {
        outs,
        unmapped,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flux_rules() -> &'static [ModuleRule] {
        let flux = Arch::parse("flux").unwrap();
        &flux.info().spec.diffusers.as_ref().unwrap().modules
    }

    /// Flux.1's module rules name each fused projection's parts with their rows, and read
    /// back: diffusers' names of a double block become the fused `qkv` again.
    #[test]
    fn module_rules_split_and_join() {
        let names = module_names(flux_rules(), "single_blocks.3.linear1");
        assert_eq!(
            names,
            [
                (
                    "single_transformer_blocks.3.attn.to_q".into(),
                    Some(Rows::Hidden(0))
                ),
                (
                    "single_transformer_blocks.3.attn.to_k".into(),
                    Some(Rows::Hidden(1))
                ),
                (
                    "single_transformer_blocks.3.attn.to_v".into(),
                    Some(Rows::Hidden(2))
                ),
                (
                    "single_transformer_blocks.3.proj_mlp".into(),
                    Some(Rows::AfterHidden(3))
                ),
            ]
        );
        assert_eq!(
            module_names(flux_rules(), "img_in"),
            [("x_embedder".into(), None)]
        );
        assert!(module_names(flux_rules(), "double_blocks.x.img_attn.qkv").is_empty());
        let t = |name: &str| TensorEntry {
            name: name.into(),
            dtype: ckpt_read::Dtype::F16,
            shape: vec![6, 2],
            begin: 0,
            end: 24,
            encoding: Default::default(),
        };
        let tensors = [
            t("transformer_blocks.1.attn.to_k.weight"),
            t("transformer_blocks.1.attn.to_q.weight"),
            t("transformer_blocks.1.attn.to_v.weight"),
            t("x_embedder.bias"),
            t("transformer_blocks.1.attn.to_q.bias"),
            t("pos_embed.freqs"),
        ];
        let m = map_modules(&tensors, flux_rules(), "model.diffusion_model.", 0, None);
        let outs: Vec<String> = m
            .outs
            .iter()
            .map(|p| match p {
                Piece::Same { as_name, .. } => format!("same {as_name}"),
                Piece::Stack { names, as_name, .. } => format!("stack {as_name} <- {names:?}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            outs,
            [
                "same model.diffusion_model.img_in.bias",
                "stack model.diffusion_model.double_blocks.1.img_attn.qkv.weight <- \
                 [\"transformer_blocks.1.attn.to_q.weight\", \"transformer_blocks.1.attn.to_k.weight\", \
                 \"transformer_blocks.1.attn.to_v.weight\"]",
            ]
        );
        assert_eq!(
            m.unmapped,
            ["pos_embed.freqs", "transformer_blocks.1.attn.to_q.bias"]
        );
    }
}
