//! `ckpt-diff fit` on targets planted from known recipes over generated sources: the
//! planted alphas and coefficients come back, noise lands in the residual report, and the
//! clone built with `--apply` measures what was predicted (checked with a naive reader).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_core::catalog::{Arch, Block};
use ckpt_ops::synth::{Profile, Synthetic, family, profile_from_blocks, uniform};
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

/// The architecture most tests fit.
fn sd1() -> Arch {
    arch("sd1")
}

/// A base and four fine-tunes (F32, so the planted targets are exact to f32 rounding).
struct Sources {
    arch: Arch,
    scale: u32,
    dir: Dir,
    base: Synthetic,
    fts: Vec<Synthetic>,
    base_path: PathBuf,
    ft_paths: Vec<PathBuf>,
}

fn sources() -> Sources {
    sources_of(sd1(), 16)
}

fn sources_of(arch: Arch, scale: u32) -> Sources {
    let dir = Dir::new();
    let lay = layout(arch, scale, FloatFormat::F32);
    let base = Synthetic::base(arch, 21);
    let fts: Vec<Synthetic> = (1..=4)
        .map(|i| base.plus_delta(500 + i as u64, family::finetune_profile(arch, 21, i, 0.2)))
        .collect();
    let base_path = dir.model("base.safetensors", &lay, &base);
    let ft_paths = fts
        .iter()
        .enumerate()
        .map(|(i, m)| dir.model(&format!("ft{}.safetensors", i + 1), &lay, m))
        .collect();
    Sources {
        arch,
        scale,
        dir,
        base,
        fts,
        base_path,
        ft_paths,
    }
}

impl Sources {
    /// The base's path, as a command-line word.
    fn base(&self) -> &str {
        s(&self.base_path)
    }

    /// The path of fine-tune `i`, as a command-line word.
    fn ft(&self, i: usize) -> &str {
        s(&self.ft_paths[i])
    }

    fn target(&self, name: &str, model: &Synthetic) -> PathBuf {
        self.dir.model(
            name,
            &layout(self.arch, self.scale, FloatFormat::F32),
            model,
        )
    }

    /// `fit --target T --base base --start ft1 --sources ft2 ft3 ft4 <extra> --json`.
    fn fit(&self, target: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = words(
            "fit --target {} --base {} --start {} --sources {} {} {}",
            &[
                s(target),
                self.base(),
                self.ft(0),
                self.ft(1),
                self.ft(2),
                self.ft(3),
            ],
        );
        args.extend_from_slice(extra);
        run_json(&args)
    }
}

/// A profile with the same value on every row.
fn all(v: f64) -> Profile {
    uniform(sd1(), v)
}

/// Distinct per-block alphas in [lo, lo + 0.5): block weights a merger might use.
fn per_block(lo: f64, salt: usize) -> Vec<f64> {
    per_block_of(sd1(), lo, salt)
}

pub(crate) fn per_block_of(arch: Arch, lo: f64, salt: usize) -> Vec<f64> {
    arch.merge_blocks()
        .iter()
        .enumerate()
        .map(|(i, _)| lo + 0.5 * (((i * 7 + salt * 3) % 26) as f64 / 26.0))
        .collect()
}

fn block_profile(alpha: &[f64]) -> Profile {
    block_profile_of(sd1(), alpha)
}

/// Rows take their block's alpha; rows no list entry weighs (Flux's VAE) take 0.
pub(crate) fn block_profile_of(arch: Arch, alpha: &[f64]) -> Profile {
    let blocks = arch.merge_blocks();
    profile_from_blocks(arch, |b: Block| {
        blocks
            .iter()
            .position(|x| *x == b)
            .map_or(0.0, |i| alpha[i])
    })
}

/// C x (1-a) + M x a, row by row (a per row).
fn weighted_sum(c: &Synthetic, m: &Synthetic, a: &Profile) -> Synthetic {
    let keep: Profile = a.iter().map(|x| 1.0 - x).collect();
    Synthetic::lincomb(&[(keep, c), (a.clone(), m)])
}

/// C + (M - base) x a.
fn add_difference(c: &Synthetic, m: &Synthetic, base: &Synthetic, a: &Profile) -> Synthetic {
    let minus: Profile = a.iter().map(|x| -x).collect();
    let one = vec![1.0; a.len()];
    Synthetic::lincomb(&[(one, c), (a.clone(), m), (minus, base)])
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn blocks_in(v: &serde_json::Value) -> Vec<String> {
    v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

/// The U-Net blocks' positions in the block list (the default region).
fn unet_blocks(v: &serde_json::Value) -> Vec<usize> {
    blocks_in(v)
        .iter()
        .enumerate()
        .filter(|(_, b)| *b != "BASE")
        .map(|(i, _)| i)
        .collect()
}

/// Coefficients on [start, ft2, ft3, ft4] a step list builds, replayed plainly from the
/// JSON (sources named by file stem), for one block.
fn replay(steps: &serde_json::Value, block: usize) -> [f64; 4] {
    let mut c = [1.0, 0.0, 0.0, 0.0];
    for st in steps.as_array().unwrap() {
        let alpha = floats(&st["alpha"]);
        let a = if alpha.len() == 1 {
            alpha[0]
        } else {
            alpha[block]
        };
        let slot = match st["source"].as_str().unwrap() {
            "start" => 0,
            "ft2" => 1,
            "ft3" => 2,
            "ft4" => 3,
            other => panic!("unexpected source {other}"),
        };
        if st["op"] == "weighted_sum" {
            c.iter_mut().for_each(|x| *x *= 1.0 - a);
        }
        c[slot] += a;
    }
    c
}

/// Every U-Net block's coefficients, replayed from the fit's steps, equal `planted(block)`
/// within 1e-3.
fn assert_replays(v: &serde_json::Value, planted: impl Fn(usize) -> [f64; 4]) {
    for b in unet_blocks(v) {
        let got = replay(&v["steps"], b);
        for (k, (got, want)) in got.iter().zip(planted(b)).enumerate() {
            assert_close(&format!("block {b} coefficient {k}"), *got, want, 1e-3);
        }
    }
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, planted {want} (tolerance {tol})"
    );
}

#[test]
fn single_step_scalar_alpha_is_recovered() {
    let src = sources();
    let target = weighted_sum(&src.fts[0], &src.fts[1], &all(0.37));
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--max-steps", "1"]);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["source"], "ft2");
    assert_eq!(steps[0]["op"], "weighted_sum");
    assert_close("alpha", floats(&steps[0]["alpha"])[0], 0.37, 1e-3);
    assert!(steps[0]["objective"].as_f64().unwrap() >= 0.9999);
}

#[test]
fn single_step_per_block_alphas_are_recovered() {
    let src = sources();
    let alpha = per_block(0.1, 1);
    // ft3 has a VAE of its own, so the BASE block (text encoder, VAE) is observable too.
    let target = add_difference(&src.fts[0], &src.fts[2], &src.base, &block_profile(&alpha));
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--max-steps", "1", "--per-block", "--region", "all"]);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["source"], "ft3");
    assert_eq!(steps[0]["op"], "add_difference");
    let got = floats(&steps[0]["alpha"]);
    let names = blocks_in(&v);
    assert_eq!(got.len(), 26);
    for (i, name) in names.iter().enumerate() {
        assert_close(name, got[i], alpha[i], 1e-3);
    }
    assert!(steps[0]["objective"].as_f64().unwrap() >= 0.9999);
}

/// The same on Flux.1: 61 alphas in SuperMerger's Flux order come back.
#[test]
fn flux_per_block_alphas_are_recovered() {
    per_block_alphas_are_recovered("flux", 61, ("CLIP", "OUT"));
}

/// The 2026 models' block lists: a planted per-block add-difference recovered block by block.
#[test]
fn z_image_and_qwen_image_per_block_alphas_are_recovered() {
    per_block_alphas_are_recovered("z-image", 39, ("X_EMBEDDER", "FINAL_LAYER"));
    per_block_alphas_are_recovered("qwen-image", 66, ("IMG_IN", "PROJ_OUT"));
}

/// `T = ft1 + (ft3 - base) x alpha[block]` at 1/32 scale: `fit --per-block` finds ft3, the
/// operation, and every observable block's alpha.
fn per_block_alphas_are_recovered(id: &str, blocks: usize, ends: (&str, &str)) {
    let arch = arch(id);
    let src = sources_of(arch, 32);
    let alpha = per_block_of(arch, 0.1, 2);
    let target = add_difference(
        &src.fts[0],
        &src.fts[2],
        &src.base,
        &block_profile_of(arch, &alpha),
    );
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--max-steps", "1", "--per-block", "--region", "all"]);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[0]["source"], "ft3", "{id}");
    assert_eq!(steps[0]["op"], "add_difference", "{id}");
    let got = floats(&steps[0]["alpha"]);
    let names = blocks_in(&v);
    assert_eq!(names.len(), blocks, "{id}");
    assert_eq!(
        (names[0].as_str(), names[blocks - 1].as_str()),
        ends,
        "{id}"
    );
    // A block ft3 did not train (its delta there is zero) leaves its alpha unobservable.
    let delta = family::finetune_profile(arch, 21, 3, 0.2);
    let rows = ckpt_core::catalog::Grouping::for_arch(arch);
    let mut checked = 0;
    for (i, name) in names.iter().enumerate() {
        let trained = rows
            .groups()
            .iter()
            .zip(&delta)
            .any(|(g, d)| g.weight_block.is_some_and(|b| b.to_string() == *name) && *d != 0.0);
        if trained {
            assert_close(name, got[i], alpha[i], 1e-3);
            checked += 1;
        }
    }
    assert!(
        checked >= blocks - 2,
        "{id}: only {checked} blocks observable"
    );
}

#[test]
fn multi_step_scalar_recipe_is_recovered() {
    // S1 = ft1 x 0.4 + ft2 x 0.6; S2 = S1 + (ft4 - base) x 0.15; T = S2 x 0.8 + ft3 x 0.2.
    let src = sources();
    let s1 = weighted_sum(&src.fts[0], &src.fts[1], &all(0.6));
    let s2 = add_difference(&s1, &src.fts[3], &src.base, &all(0.15));
    let target = weighted_sum(&s2, &src.fts[2], &all(0.2));
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &[]);
    let steps = &v["steps"];
    let objective = v["greedy"]["objective"].as_f64().unwrap();
    assert!(objective >= 0.9999, "similarity {objective}");
    // The model: planted coefficients on [start, ft2, ft3, ft4], in every block.
    let planted = [0.4 * 0.8, 0.6 * 0.8, 0.2, 0.15 * 0.8];
    assert_replays(&v, |_| planted);
    // The steps: the planted ones, in some order (a linear recipe's steps can be
    // reordered with other alphas for the same model); the alphas are the planted ones
    // rewritten for that order.
    let got: Vec<(String, String, f64)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_string(),
                s["op"].as_str().unwrap().to_string(),
                floats(&s["alpha"])[0],
            )
        })
        .collect();
    let mut kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|(s, o, _)| (s.as_str(), o.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("ft2", "weighted_sum"),
            ("ft3", "weighted_sum"),
            ("ft4", "add_difference")
        ],
        "steps {got:?}"
    );
    let slot = |name: &str| {
        ["start", "ft2", "ft3", "ft4"]
            .iter()
            .position(|n| *n == name)
            .unwrap()
    };
    let implied = implied_alphas(&got, &planted, slot);
    for ((name, _, alpha), want) in got.iter().zip(implied) {
        assert_close(name, *alpha, want, 1e-3);
    }
    if got[1].0 == "ft4" {
        // The planted order itself.
        let want = [0.6, 0.15, 0.2];
        for ((name, _, alpha), w) in got.iter().zip(want) {
            assert_close(name, *alpha, w, 1e-3);
        }
    }
}

/// The alphas a step sequence (each source once, never the start) needs to build the
/// coefficients `planted`, solved from the last step back: a source's final coefficient
/// is its alpha times (1 - alpha) of every later weighted sum.
fn implied_alphas(
    steps: &[(String, String, f64)],
    planted: &[f64; 4],
    slot: impl Fn(&str) -> usize,
) -> Vec<f64> {
    let mut later = 1.0;
    let mut out = vec![0.0; steps.len()];
    for (j, (name, op, _)) in steps.iter().enumerate().rev() {
        out[j] = planted[slot(name)] / later;
        if op == "weighted_sum" {
            later *= 1.0 - out[j];
        }
    }
    out
}

#[test]
fn multi_step_per_block_recipe_is_recovered() {
    // S1 = ft1 x (1-a) + ft2 x a, a per block; T = S1 + (ft4 - base) x c, c per block.
    let src = sources();
    let a = per_block(0.35, 2);
    let c = per_block(0.05, 5);
    let s1 = weighted_sum(&src.fts[0], &src.fts[1], &block_profile(&a));
    let target = add_difference(&s1, &src.fts[3], &src.base, &block_profile(&c));
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--per-block"]);
    assert!(v["greedy"]["objective"].as_f64().unwrap() >= 0.9999);
    let steps = &v["steps"];
    assert_replays(&v, |b| [1.0 - a[b], a[b], 0.0, c[b]]);
    // Add differences commute with nothing here, so the alphas depend on the order the
    // search chose; for the planted order they are the planted ones.
    let list = steps.as_array().unwrap();
    assert_eq!(list.len(), 2);
    if list[0]["source"] == "ft2" {
        let (ga, gc) = (floats(&list[0]["alpha"]), floats(&list[1]["alpha"]));
        for b in unet_blocks(&v) {
            assert_close("a", ga[b], a[b], 1e-3);
            assert_close("c", gc[b], c[b], 1e-3);
        }
    } else {
        // (ft1 + (ft4 - base) x c') x (1 - a) + ft2 x a: c' = c / (1 - a).
        let (gc, ga) = (floats(&list[0]["alpha"]), floats(&list[1]["alpha"]));
        for b in unet_blocks(&v) {
            assert_close("a", ga[b], a[b], 1e-3);
            assert_close("c'", gc[b], c[b] / (1.0 - a[b]), 1e-3);
        }
    }
}

#[test]
fn global_fit_recovers_planted_weights() {
    // T = base x (1 - w) + ft1 x w1 + ft2 x w2 + ft3 x w3 with per-block weights that no
    // short greedy sequence in bounds reaches (one is negative).
    let src = sources();
    let w1 = per_block(0.2, 1);
    let w2: Vec<f64> = per_block(-0.3, 4);
    let w3 = per_block(0.1, 7);
    let wb: Vec<f64> = (0..26).map(|i| 1.0 - w1[i] - w2[i] - w3[i]).collect();
    let target = Synthetic::lincomb(&[
        (block_profile(&wb), &src.base),
        (block_profile(&w1), &src.fts[0]),
        (block_profile(&w2), &src.fts[1]),
        (block_profile(&w3), &src.fts[2]),
    ]);
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--max-steps", "1"]);
    let global = v["global"]["objective"].as_f64().unwrap();
    assert!(global >= 0.999999, "global {global}");
    assert!(global >= v["greedy"]["objective"].as_f64().unwrap());
    let weights = v["global"]["weights"].as_array().unwrap();
    for b in unet_blocks(&v) {
        let w = floats(&weights[b]);
        assert_close("w1", w[0], w1[b], 1e-3);
        assert_close("w2", w[1], w2[b], 1e-3);
        assert_close("w3", w[2], w3[b], 1e-3);
        assert_close("w4", w[3], 0.0, 1e-3);
    }
    // The global recipe, written with --global, is what merge runs.
    let recipe = src.dir.path("global.recipe");
    let _ = src.fit(&t, &["--max-steps", "1", "--global", "-o", s(&recipe)]);
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains("OUT = base x w_base"), "{text}");
}

#[test]
fn bounds_are_respected() {
    let src = sources();
    let target = weighted_sum(&src.fts[0], &src.fts[1], &all(0.37));
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--max-steps", "1", "--bounds", "0:0.25"]);
    let a = floats(&v["steps"][0]["alpha"])[0];
    assert!((0.0..=0.25).contains(&a), "alpha {a}");
    assert_close("alpha at the bound", a, 0.25, 1e-9);
}

#[test]
fn noise_lands_in_the_residual_report() {
    let src = sources();
    let a = per_block(0.2, 3);
    let planted = weighted_sum(&src.fts[0], &src.fts[2], &block_profile(&a));
    // Extra training in IN04 and OUT07 only, as large as a fine-tune's change.
    let noised = ["IN04", "OUT07"];
    let noise = profile_from_blocks(sd1(), |b| {
        if noised.contains(&b.to_string().as_str()) {
            0.2
        } else {
            0.0
        }
    });
    let target = planted.plus_delta(999, noise);
    let t = src.target("t.safetensors", &target);
    let v = src.fit(&t, &["--per-block", "--max-steps", "2"]);
    let residuals = v["residuals"].as_array().unwrap();
    for r in residuals {
        let (row, rel) = (r["row"].as_str().unwrap(), r["relative"].as_f64().unwrap());
        if noised.contains(&row) {
            assert!(rel > 0.3, "{row} residual {rel}");
        } else if row.starts_with("IN") || row.starts_with("OUT") || row == "M00" {
            assert!(rel < 1e-3, "{row} residual {rel}");
        }
    }
    // Graceful: the other blocks still fit exactly.
    let row_names: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let sims = floats(&v["greedy"]["rows"]);
    for (row, sim) in row_names.iter().zip(&sims) {
        if row.starts_with("IN") || row.starts_with("OUT") || *row == "M00" {
            if noised.contains(row) {
                assert!(*sim < 0.9999, "{row} {sim}");
            } else {
                assert!(*sim >= 0.99999, "{row} {sim}");
            }
        }
    }
    let names = blocks_in(&v);
    let first = &v["steps"][0];
    assert_eq!(first["source"], "ft3");
    let got = floats(&first["alpha"]);
    for b in unet_blocks(&v) {
        if !noised.contains(&names[b].as_str()) {
            assert_close(&names[b], got[b], a[b], 1e-3);
        }
    }
    // And the text report names them.
    let text = run_ok(&words(
        "fit --target {} --base {} --start {} --sources {} {} --per-block",
        &[s(&t), src.base(), src.ft(0), src.ft(1), src.ft(2)],
    ));
    let line = text
        .lines()
        .find(|l| l.starts_with("not explained"))
        .expect("a residual line");
    assert!(line.contains("IN04") && line.contains("OUT07"), "{line}");
    assert!(!line.contains("IN05"), "{line}");
}

/// Mean over the U-Net blocks of the per-block cosine, computed plainly from two files.
fn naive_mean_block_cosine(a: &Path, b: &Path) -> (f64, BTreeMap<String, f64>) {
    let (ma, mb) = (reference_map(a), reference_map(b));
    let mut sums: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    for (key, ta) in &ma {
        let Some(x) = &ta.values else { continue };
        if !key.starts_with("model.diffusion_model.") {
            continue;
        }
        let y = mb[key].values.as_ref().unwrap();
        let e = sums.entry(reference_block(key, 12)).or_default();
        for (p, q) in x.iter().zip(y) {
            e[0] += p * q;
            e[1] += p * p;
            e[2] += q * q;
        }
    }
    let per: BTreeMap<String, f64> = sums
        .iter()
        .map(|(k, v)| (k.clone(), v[0] / (v[1] * v[2]).sqrt()))
        .collect();
    let mean = per.values().sum::<f64>() / per.len() as f64;
    (mean, per)
}

#[test]
fn applied_clone_measures_what_was_predicted() {
    let src = sources();
    let a = per_block(0.3, 6);
    let s1 = weighted_sum(&src.fts[0], &src.fts[3], &block_profile(&a));
    // Noise everywhere, so the prediction is not trivially 100%.
    let target = s1.plus_delta(77, all(0.05));
    let t = src.target("t.safetensors", &target);
    let clone = src.dir.path("clone.safetensors");
    let v = src.fit(&t, &["--per-block", "--apply", s(&clone)]);
    let predicted = v["apply"]["predicted"].as_f64().unwrap();
    let measured = v["apply"]["measured"].as_f64().unwrap();
    assert!(predicted < 0.99999, "the noise should show: {predicted}");
    assert_close("measured", measured, predicted, 1e-6);
    let (naive, per) = naive_mean_block_cosine(&clone, &t);
    assert_eq!(per.len(), 25);
    assert_close("naive measurement", naive, predicted, 1e-6);
}

#[test]
fn start_defaults_to_the_base_and_flat_objective_works() {
    // T = base + (ft3 - base) x 0.4 + (ft2 - base) x 0.25, fitted from the base itself
    // (read once) with the flattened cosine of the whole model.
    let src = sources();
    let s1 = add_difference(&src.base, &src.fts[2], &src.base, &all(0.4));
    let target = add_difference(&s1, &src.fts[1], &src.base, &all(0.25));
    let t = src.target("t.safetensors", &target);
    let v = run_json(&words(
        "fit --target {} --base {} --sources {} {} --objective flat --region all",
        &[s(&t), src.base(), src.ft(1), src.ft(2)],
    ));
    assert_eq!(v["models"]["start"], "base.safetensors");
    // From the base a weighted sum and an add difference are the same step, and steps
    // can be reordered: the model is what must come back (the start's delta is zero).
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let c = replay(&v["steps"], 0);
    assert_close("ft2", c[1], 0.25, 1e-3);
    assert_close("ft3", c[2], 0.4, 1e-3);
    assert_close("ft4", c[3], 0.0, 1e-12);
    assert!(v["greedy"]["objective"].as_f64().unwrap() >= 0.99999);
}

#[test]
fn refuses_existing_outputs_and_mixed_architectures() {
    let src = sources();
    let t = src.target(
        "t.safetensors",
        &weighted_sum(&src.fts[0], &src.fts[1], &all(0.5)),
    );
    let recipe = src.dir.path("r.recipe");
    std::fs::write(&recipe, "keep me").unwrap();
    let (code, _, err) = run_code(&words(
        "fit --target {} --base {} --sources {} -o {}",
        &[s(&t), src.base(), src.ft(1), s(&recipe)],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&recipe).unwrap(), "keep me");

    let xl = src.dir.model(
        "xl.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 1),
    );
    let (code, _, err) = run_code(&words(
        "fit --target {} --base {} --sources {}",
        &[s(&xl), src.base(), src.ft(1)],
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("xl.safetensors") && err.contains("SDXL"),
        "{err}"
    );
}
