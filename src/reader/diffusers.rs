//! Models in several files read as one checkpoint: diffusers folders (SD1, SD2, SDXL) under
//! the single-file key names, and sharded safetensors (`*.index.json` and its parts).
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
//! Tensors that need fusing or transposing are copied once (see [`super::spill`]); all
//! others are read in place from their files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::header::{Header, TensorEntry};
use super::spill::{Spill, View};
use super::{Checkpoint, Container, ReadError, Source, dtype};

/// Whether `path` names a shard index (`*.safetensors.index.json`).
pub fn is_shard_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

fn folder_err(what: impl Into<String>) -> ReadError {
    ReadError::Folder(what.into())
}

/// A sharded model: the index's `weight_map` names, for each tensor, the part holding it.
pub fn open_sharded(index: &Path) -> Result<Checkpoint, ReadError> {
    let parts = shard_parts(index)?;
    let opened = parts
        .iter()
        .map(|p| Checkpoint::open(p).map_err(|e| folder_err(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plan = Vec::new();
    for c in &opened {
        for t in c.tensors() {
            plan.push(Out::Same {
                part: plan_part(&opened, c),
                name: t.name.clone(),
                as_name: t.name.clone(),
                shape: None,
            });
        }
    }
    let notes = vec![format!(
        "{} shards listed by {}",
        parts.len(),
        index.display()
    )];
    combine(index, Container::Sharded, opened, plan, notes)
}

fn plan_part(all: &[Checkpoint], c: &Checkpoint) -> usize {
    all.iter()
        .position(|x| std::ptr::eq(x, c))
        .expect("one of them")
}

/// The part files an index names, in order, each once.
fn shard_parts(index: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let text = std::fs::read_to_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| folder_err(format!("the shard index is not valid JSON: {e}")))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(folder_err("the shard index has no \"weight_map\" object"));
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut parts: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let Some(f) = file.as_str() else {
            return Err(folder_err("a weight_map value is not a file name"));
        };
        // A part is a file beside the index, never a path elsewhere.
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(folder_err(format!(
                "the shard index names '{f}', not a file beside it"
            )));
        }
        let p = dir.join(f);
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    if parts.is_empty() {
        return Err(folder_err("the shard index lists no tensors"));
    }
    Ok(parts)
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

/// The architecture of a diffusers folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Sd1,
    Sd2,
    Sdxl,
}

/// A folder: a diffusers pipeline (`unet/` and friends), or a sharded model.
pub fn open_folder(dir: &Path) -> Result<Checkpoint, ReadError> {
    let has = |c: &str| dir.join(c).is_dir();
    if !has("unet") && !has("vae") && !has("text_encoder") {
        let indexes: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_shard_index(p))
            .collect();
        return match indexes.as_slice() {
            [one] => open_sharded(one),
            [] => Err(ReadError::IsDirectory),
            _ => Err(folder_err(
                "the folder holds several *.index.json files: name the one to read",
            )),
        };
    }
    let mut opened = Vec::new();
    let mut which: Vec<&'static str> = Vec::new();
    let mut notes = Vec::new();
    for c in ["unet", "text_encoder", "text_encoder_2", "vae"] {
        if !has(c) {
            continue;
        }
        let Some(file) = component_file(&dir.join(c)) else {
            return Err(folder_err(format!(
                "{c}/ has no diffusion_pytorch_model.safetensors, model.safetensors or .bin file"
            )));
        };
        let ckpt = Checkpoint::open(&file).map_err(|e| folder_err(e.to_string()))?;
        notes.push(format!(
            "{c}/ from {}",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        opened.push(ckpt);
        which.push(c);
    }
    let family = if which.contains(&"text_encoder_2") {
        Family::Sdxl
    } else {
        // OpenCLIP-H (SD2) has 23 layers in diffusers' text encoder, CLIP-L (SD1) 12.
        let te = which.iter().position(|c| *c == "text_encoder");
        let layers = te.map(|i| layer_count(&opened[i])).unwrap_or(0);
        if layers > 12 {
            Family::Sd2
        } else {
            Family::Sd1
        }
    };
    let mut plan = Vec::new();
    let mut unmapped: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (part, (c, ckpt)) in which.iter().zip(&opened).enumerate() {
        let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
        let mapped = match *c {
            "unet" => map_unet(&names, family, part, ckpt),
            "text_encoder" => match family {
                Family::Sd2 => map_openclip(&names, "cond_stage_model.model.", part, ckpt, false),
                Family::Sd1 => map_clip_l(&names, "cond_stage_model.transformer.", part),
                Family::Sdxl => map_clip_l(&names, "conditioner.embedders.0.transformer.", part),
            },
            "text_encoder_2" => {
                map_openclip(&names, "conditioner.embedders.1.model.", part, ckpt, true)
            }
            _ => map_vae(&names, part, ckpt),
        };
        plan.extend(mapped.outs);
        if !mapped.unmapped.is_empty() {
            unmapped.insert(c, mapped.unmapped);
        }
    }
    for (c, names) in &unmapped {
        notes.push(format!(
            "{} tensors of {c}/ have no single-file name and are left out: {}",
            names.len(),
            names.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    combine(dir, Container::Diffusers, opened, plan, notes)
}

fn layer_count(ckpt: &Checkpoint) -> usize {
    ckpt.tensors()
        .iter()
        .filter_map(|t| {
            let rest = t.name.strip_prefix("text_model.encoder.layers.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

/// One output tensor of a combined checkpoint.
enum Out {
    /// A part's tensor under another name (and shape), read in place.
    Same {
        part: usize,
        name: String,
        as_name: String,
        shape: Option<Vec<usize>>,
    },
    /// Several tensors of a part stacked along the first dimension (q, k, v -> in_proj).
    Stack {
        part: usize,
        names: Vec<String>,
        as_name: String,
    },
    /// A part's 2-D tensor transposed.
    Transpose {
        part: usize,
        name: String,
        as_name: String,
    },
}

struct Mapped {
    outs: Vec<Out>,
    unmapped: Vec<String>,
}

/// `(diffusers prefix, single-file prefix)` pairs of the U-Net, most specific first.
pub(crate) fn unet_prefixes(family: Family) -> Vec<(String, String)> {
    let mut m = Vec::new();
    // Levels, and which levels' down and up blocks have attentions.
    type Has = fn(usize) -> bool;
    let (levels, down_attn, up_attn): (usize, Has, Has) = match family {
        Family::Sdxl => (3, |i| i > 0, |i| i < 2),
        _ => (4, |i| i < 3, |i| i > 0),
    };
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

fn map_unet(names: &[&str], family: Family, part: usize, _c: &Checkpoint) -> Mapped {
    let prefixes = unet_prefixes(family);
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for &name in names {
        match unet_rename(name, &prefixes, true) {
            Some(m) => outs.push(Out::Same {
                part,
                name: name.to_string(),
                as_name: format!("model.diffusion_model.{m}"),
                shape: None,
            }),
            None => unmapped.push(name.to_string()),
        }
    }
    Mapped { outs, unmapped }
}

fn map_clip_l(names: &[&str], prefix: &str, part: usize) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for &name in names {
        if name.starts_with("text_model.") {
            outs.push(Out::Same {
                part,
                name: name.to_string(),
                as_name: format!("{prefix}{name}"),
                shape: None,
            });
        } else {
            unmapped.push(name.to_string());
        }
    }
    Mapped { outs, unmapped }
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
fn map_openclip(
    names: &[&str],
    prefix: &str,
    part: usize,
    _c: &Checkpoint,
    projection: bool,
) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    let mut qkv: BTreeMap<(usize, &str), [Option<String>; 3]> = BTreeMap::new();
    for &name in names {
        if name == "text_projection.weight" && projection {
            outs.push(Out::Transpose {
                part,
                name: name.into(),
                as_name: format!("{prefix}text_projection"),
            });
            continue;
        }
        let Some(rest) = name.strip_prefix("text_model.") else {
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
            outs.push(Out::Same {
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
            _ => {
                // position_ids has no OpenCLIP counterpart.
                unmapped.push(name.into());
                continue;
            }
        };
        outs.push(Out::Same {
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
            [Some(q), Some(k), Some(v)] => outs.push(Out::Stack {
                part,
                names: vec![q, k, v],
                as_name: format!("{prefix}transformer.resblocks.{n}.attn.{suffix}"),
            }),
            other => unmapped.extend(other.into_iter().flatten()),
        }
    }
    Mapped { outs, unmapped }
}

fn map_vae(names: &[&str], part: usize, c: &Checkpoint) -> Mapped {
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
    for &name in names {
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
        let shape = c
            .get(name)
            .filter(|t| attention && t.shape.len() == 2)
            .map(|t| vec![t.shape[0], t.shape[1], 1, 1]);
        outs.push(Out::Same {
            part,
            name: name.into(),
            as_name: format!("first_stage_model.{as_name}"),
            shape,
        });
    }
    Mapped { outs, unmapped }
}

/// Builds one checkpoint from the parts' sources and the plan.
fn combine(
    path: &Path,
    container: Container,
    parts: Vec<Checkpoint>,
    plan: Vec<Out>,
    notes: Vec<String>,
) -> Result<Checkpoint, ReadError> {
    // Every part's sources, shifted so that the address spaces follow each other.
    let mut shift = Vec::with_capacity(parts.len());
    let mut at = 0usize;
    for p in &parts {
        shift.push(at);
        let end = p.sources.iter().map(|s| s.at + s.len).max().unwrap_or(0);
        at += end;
    }
    let mut spill = Spill::new(at);
    let mut tensors: Vec<TensorEntry> = Vec::with_capacity(plan.len());
    let mut seen: HashMap<String, ()> = HashMap::new();
    let tensor = |part: usize, name: &str| -> Result<&TensorEntry, ReadError> {
        parts[part]
            .get(name)
            .ok_or_else(|| folder_err(format!("tensor '{name}' is not in its file")))
    };
    for out in &plan {
        let entry = match out {
            Out::Same {
                part,
                name,
                as_name,
                shape,
            } => {
                let t = tensor(*part, name)?;
                if let Some(s) = shape
                    && s.iter().product::<usize>() != t.numel()
                {
                    return Err(folder_err(format!(
                        "tensor '{name}' cannot take shape {s:?}"
                    )));
                }
                TensorEntry {
                    name: as_name.clone(),
                    dtype: t.dtype,
                    shape: shape.clone().unwrap_or_else(|| t.shape.clone()),
                    begin: t.begin + shift[*part],
                    end: t.end + shift[*part],
                    scale: t.scale,
                }
            }
            Out::Stack {
                part,
                names,
                as_name,
            } => {
                let ts = names
                    .iter()
                    .map(|n| tensor(*part, n))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = ts[0];
                let same = ts
                    .iter()
                    .all(|t| t.dtype == first.dtype && t.shape == first.shape);
                if !same || first.shape.is_empty() {
                    return Err(folder_err(format!(
                        "{} do not have one dtype and shape, so they cannot be fused",
                        names.join(", ")
                    )));
                }
                let begin = spill.append(parts[*part].data(ts[0]))?;
                for t in &ts[1..] {
                    spill.append(parts[*part].data(t))?;
                }
                let mut shape = first.shape.clone();
                shape[0] *= ts.len();
                let bytes = ts.iter().map(|t| t.byte_len()).sum::<usize>();
                TensorEntry {
                    name: as_name.clone(),
                    dtype: first.dtype,
                    shape,
                    begin,
                    end: begin + bytes,
                    scale: None,
                }
            }
            Out::Transpose {
                part,
                name,
                as_name,
            } => {
                let t = tensor(*part, name)?;
                if t.shape.len() != 2 {
                    return Err(folder_err(format!("tensor '{name}' is not a matrix")));
                }
                let esize = dtype::bit_size(t.dtype) / 8;
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let begin = spill.gather(&View {
                    bytes: parts[*part].data(t),
                    esize,
                    shape: &[cols, rows],
                    stride: &[1, cols],
                    offset: 0,
                    swap: false,
                })?;
                TensorEntry {
                    name: as_name.clone(),
                    dtype: t.dtype,
                    shape: vec![cols, rows],
                    begin,
                    end: begin + t.byte_len(),
                    scale: None,
                }
            }
        };
        if seen.insert(entry.name.clone(), ()).is_some() {
            return Err(folder_err(format!(
                "two tensors of the folder map to '{}'",
                entry.name
            )));
        }
        tensors.push(entry);
    }
    tensors.sort_by_key(|t| (t.begin, t.end));
    let mut sources: Vec<Source> = Vec::new();
    for (p, s) in parts.into_iter().zip(&shift) {
        for mut src in p.sources {
            src.at += s;
            sources.push(src);
        }
    }
    spill.finish_into(&mut sources)?;
    sources.sort_by_key(|s| s.at);
    let header = Header {
        tensors,
        ..Default::default()
    };
    let mut ckpt = Checkpoint::assemble(path, container, sources, None, 0, header)?;
    ckpt.notes = notes;
    Ok(ckpt)
}
