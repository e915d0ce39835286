//! A family of synthetic checkpoints: a base, fine-tunes of it, and merges of those, with a
//! manifest that says exactly how each member was made.

use serde::Serialize;

use super::{Profile, Synthetic, rows};
use ckpt_core::catalog::{Arch, Grouping, Selector};
use ckpt_core::rng::counter::{Stream, key_hash};

/// One member of a family.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// File stem (`base`, `ft1`, `ws-ft1-ft2`, ...).
    pub name: String,
    /// How it was made, in the recipe notation mergers write.
    pub recipe: String,
    pub model: Synthetic,
}

/// The per-row size of fine-tune `i` (1-based): U-Net blocks vary between 0.25 and 1.75
/// times `size`; odd fine-tunes keep the base text encoders; every third one has its own
/// VAE.
pub fn finetune_profile(arch: Arch, seed: u64, i: usize, size: f64) -> Profile {
    let stream = Stream::new(seed ^ 0x5eed_f00d, key_hash(&format!("finetune-{i}")));
    Grouping::for_arch(arch)
        .groups()
        .iter()
        .enumerate()
        .map(|(r, g)| {
            let u = stream.uniform(r as u64);
            match g.component {
                c if c.is_denoiser() => size * (0.25 + 1.5 * u),
                c if c.is_text_encoder() && i % 2 == 1 => 0.0,
                c if c.is_text_encoder() => size * (0.5 + u),
                c if c.is_vae() && i.is_multiple_of(3) => 2.0 * size,
                c if c.is_vae() => 0.0,
                _ => size,
            }
        })
        .collect()
}

/// A base, `finetunes` fine-tunes, and (with two or more) three merges: a weighted sum, a
/// block-weighted sum, and an add-difference.
pub fn family(arch: Arch, seed: u64, finetunes: usize, size: f64) -> Vec<Member> {
    let base = Synthetic::base(arch, seed);
    let mut members = vec![Member {
        name: "base".into(),
        recipe: "base (random weights)".into(),
        model: base.clone(),
    }];
    let fts: Vec<Synthetic> = (1..=finetunes)
        .map(|i| {
            base.plus_delta(
                seed.wrapping_mul(1000).wrapping_add(i as u64),
                finetune_profile(arch, seed, i, size),
            )
        })
        .collect();
    for (i, ft) in fts.iter().enumerate() {
        members.push(Member {
            name: format!("ft{}", i + 1),
            recipe: format!("base + delta{} (fine-tune)", i + 1),
            model: ft.clone(),
        });
    }
    let n = rows(arch);
    if finetunes >= 2 {
        members.push(Member {
            name: "ws-ft1-ft2".into(),
            recipe: "ft1 x 0.5 + ft2 x 0.5".into(),
            model: Synthetic::lincomb(&[(vec![0.5; n], &fts[0]), (vec![0.5; n], &fts[1])]),
        });
        // The first half of the denoiser 0.2, the middle 0.5, the second half 0.8, the
        // rest 0, as the architecture's spec writes it.
        let (weights, described) = arch.synth_mbw();
        let grouping = Grouping::for_arch(arch);
        let mut a: Profile = vec![0.0; n];
        for (selector, w) in weights {
            let chosen = Selector::parse(selector)
                .and_then(|s| s.rows(&grouping))
                .unwrap_or_else(|e| panic!("catalog data: {arch}'s [synth] mbw: {e}"));
            for (x, c) in a.iter_mut().zip(chosen) {
                if c {
                    *x = *w;
                }
            }
        }
        let one_minus: Profile = a.iter().map(|x| 1.0 - x).collect();
        members.push(Member {
            name: "mbw-ft1-ft2".into(),
            recipe: format!("ft1 x (1-alpha) + ft2 x alpha, alpha = {described}"),
            model: Synthetic::lincomb(&[(one_minus, &fts[0]), (a, &fts[1])]),
        });
        let last = fts.len() - 1;
        members.push(Member {
            name: format!("ad-ft1-ft{}", last + 1),
            recipe: format!("ft1 + (ft{} - base) x 0.7", last + 1),
            model: Synthetic::lincomb(&[
                (vec![1.0; n], &fts[0]),
                (vec![0.7; n], &fts[last]),
                (vec![-0.7; n], &base),
            ]),
        });
    }
    members
}

/// Writes the family of [`family`] into `dir` (created if needed): one file per member,
/// named `<name>.safetensors`, with its recipe in its metadata (`ckpt_diff.recipe`).
/// `progress` is asked for one reporter per member.
pub fn write_family(
    dir: &std::path::Path,
    layout: &super::Layout,
    seed: u64,
    finetunes: usize,
    size: f64,
    progress: &dyn Fn(&str) -> Box<dyn ckpt_core::pass::Progress>,
    cancel: &ckpt_core::pass::Cancel,
) -> Result<Vec<Member>, super::SynthError> {
    std::fs::create_dir_all(dir).map_err(|source| super::SynthError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    let members = family(layout.arch, seed, finetunes, size);
    for m in &members {
        super::write(
            &dir.join(format!("{}.safetensors", m.name)),
            layout,
            &m.model,
            &[("ckpt_diff.recipe".into(), m.recipe.clone())],
            progress(&m.name).as_ref(),
            cancel,
        )?;
    }
    Ok(members)
}

/// The manifest of a written family (`family.json`'s fields): the layout, the seed, and
/// every member's file, recipe and coefficients.
pub fn manifest(layout: &super::Layout, seed: u64, members: &[Member]) -> serde_json::Value {
    let members: Vec<_> = members
        .iter()
        .map(|m| {
            serde_json::json!({ "name": m.name, "file": format!("{}.safetensors", m.name),
                                "recipe": m.recipe, "model": m.model })
        })
        .collect();
    serde_json::json!({ "layout": layout, "seed": seed, "members": members })
}
