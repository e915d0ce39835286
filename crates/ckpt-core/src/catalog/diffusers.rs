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
//! Tensors that need fusing or transposing are copied once; all others are read in place
//! from their files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use thiserror::Error;

use ckpt_read::{
    Checkpoint, FileError, Layout, Piece, Provenance, ReadError, TensorEntry, assemble, file_layout,
};

/// Why a diffusers folder cannot be read.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(
        "{component}/ has no diffusion_pytorch_model.safetensors, model.safetensors or .bin file"
    )]
    NoWeights { component: &'static str },
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
    let path = path.as_ref();
    if path.is_dir() && is_pipeline(path) {
        return open_pipeline(path).map_err(|kind| OpenError::Pipeline {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(ckpt_read::open(path)?)
}

/// Whether a folder is a diffusers pipeline (it has `unet/`, `vae/` or `text_encoder/`).
pub fn is_pipeline(dir: &Path) -> bool {
    ["unet", "vae", "text_encoder"]
        .iter()
        .any(|c| dir.join(c).is_dir())
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

/// A diffusers pipeline: `unet/`, `text_encoder/`, `text_encoder_2/`, `vae/`.
fn open_pipeline(dir: &Path) -> Result<Checkpoint, PipelineError> {
    let has = |c: &str| dir.join(c).is_dir();
    let mut opened: Vec<Layout> = Vec::new();
    let mut which: Vec<&'static str> = Vec::new();
    let mut notes = Vec::new();
    for c in ["unet", "text_encoder", "text_encoder_2", "vae"] {
        if !has(c) {
            continue;
        }
        let Some(file) = component_file(&dir.join(c)) else {
            return Err(PipelineError::NoWeights { component: c });
        };
        let layout = file_layout(&file).map_err(|kind| {
            ReadError::Part(Box::new(FileError {
                path: file.clone(),
                kind,
            }))
        })?;
        notes.push(format!(
            "{c}/ from {}",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        opened.push(layout);
        which.push(c);
    }
    let family = if which.contains(&"text_encoder_2") {
        Family::Sdxl
    } else {
        // OpenCLIP-H (SD2) has 23 layers in diffusers' text encoder, CLIP-L (SD1) 12.
        let te = which.iter().position(|c| *c == "text_encoder");
        let layers = te.map(|i| layer_count(&opened[i].tensors)).unwrap_or(0);
        if layers > 12 {
            Family::Sd2
        } else {
            Family::Sd1
        }
    };
    let mut plan = Vec::new();
    let mut unmapped: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (part, (c, layout)) in which.iter().zip(&opened).enumerate() {
        let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        let mapped = match *c {
            "unet" => map_unet(&names, family, part),
            "text_encoder" => match family {
                Family::Sd2 => map_openclip(&names, "cond_stage_model.model.", part, false),
                Family::Sd1 => map_clip_l(&names, "cond_stage_model.transformer.", part),
                Family::Sdxl => map_clip_l(&names, "conditioner.embedders.0.transformer.", part),
            },
            "text_encoder_2" => map_openclip(&names, "conditioner.embedders.1.model.", part, true),
            _ => map_vae(&layout.tensors, part),
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
    let layout = assemble(
        opened,
        plan,
        Provenance::Assembled { kind: "diffusers" },
        notes,
    )?;
    Ok(Checkpoint::from_layout(dir, layout)?)
}

fn layer_count(tensors: &[TensorEntry]) -> usize {
    tensors
        .iter()
        .filter_map(|t| {
            let rest = t.name.strip_prefix("text_model.encoder.layers.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

struct Mapped {
    outs: Vec<Piece>,
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

fn map_unet(names: &[&str], family: Family, part: usize) -> Mapped {
    let prefixes = unet_prefixes(family);
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    for &name in names {
        match unet_rename(name, &prefixes, true) {
            Some(m) => outs.push(Piece::Same {
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
            outs.push(Piece::Same {
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
fn map_openclip(names: &[&str], prefix: &str, part: usize, projection: bool) -> Mapped {
    let mut outs = Vec::new();
    let mut unmapped = Vec::new();
    let mut qkv: BTreeMap<(usize, &str), [Option<String>; 3]> = BTreeMap::new();
    for &name in names {
        if name == "text_projection.weight" && projection {
            outs.push(Piece::Transpose {
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
            _ => {
                // position_ids has no OpenCLIP counterpart.
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
    Mapped { outs, unmapped }
}

fn map_vae(tensors: &[TensorEntry], part: usize) -> Mapped {
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
            as_name: format!("first_stage_model.{as_name}"),
            shape,
        });
    }
    Mapped { outs, unmapped }
}
