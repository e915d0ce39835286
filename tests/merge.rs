//! `ckpt-diff merge` against independent per-element references computed here from the
//! inputs (read with the `safetensors` crate and `half`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_core::catalog::Arch;
use ckpt_ops::synth::{Synthetic, family};
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

pub(crate) struct Family {
    pub dir: Dir,
    pub arch: Arch,
    pub base: PathBuf,
    pub fts: Vec<PathBuf>,
}

/// A base and three fine-tunes, F16, with some deltas sparse enough to disagree in sign.
pub(crate) fn family(arch: Arch) -> Family {
    let dir = Dir::new();
    let scale = match arch.id() {
        "sd1" | "sd2" => 16,
        _ => 32,
    };
    let layout = layout(arch, scale, FloatFormat::F16);
    let base = Synthetic::base(arch, 11);
    let base_path = dir.model("base.safetensors", &layout, &base);
    let fts = (1..=3)
        .map(|i| {
            let m = base.plus_delta(
                100 + i as u64,
                family::finetune_profile(arch, 11, i + 1, 0.2),
            );
            dir.model(&format!("ft{i}.safetensors"), &layout, &m)
        })
        .collect();
    Family {
        dir,
        arch,
        base: base_path,
        fts,
    }
}

/// Runs a recipe (bindings B, F1, F2, F3 added) to an f32 output; returns its tensors.
pub(crate) fn merged(fam: &Family, steps: &str, extra: &[&str]) -> BTreeMap<String, RefTensor> {
    merged_as(fam, steps, "f32", extra)
}

/// [`merged`] to `dtype`; the tensors as the file means them (scaled FP8 dequantized).
fn merged_as(
    fam: &Family,
    steps: &str,
    dtype: &str,
    extra: &[&str],
) -> BTreeMap<String, RefTensor> {
    let text = format!(
        "B = \"{}\"\nF1 = \"{}\"\nF2 = \"{}\"\nF3 = \"{}\"\n{steps}",
        s(&fam.base),
        s(&fam.fts[0]),
        s(&fam.fts[1]),
        s(&fam.fts[2])
    );
    let recipe = fam.dir.path("r.recipe");
    std::fs::write(&recipe, text).unwrap();
    let out = fam.dir.path("out.safetensors");
    let mut args = vec![
        "merge",
        s(&recipe),
        "-o",
        s(&out),
        "--dtype",
        dtype,
        "--force",
        "--no-input-hashes",
        "-q",
    ];
    args.extend(extra);
    run_ok(&args);
    dequantized_map(&out)
}

/// The inputs as f64 per key: base, then the fine-tunes.
pub(crate) fn inputs(fam: &Family) -> Vec<BTreeMap<String, RefTensor>> {
    std::iter::once(&fam.base)
        .chain(&fam.fts)
        .map(|p| reference_map(p))
        .collect()
}

pub(crate) fn check(
    fam: &Family,
    got: &BTreeMap<String, RefTensor>,
    want: impl Fn(&str, &[&[f64]]) -> Vec<f64>,
) {
    let ins = inputs(fam);
    let mut checked = 0;
    for (key, t) in got {
        let Some(values) = &t.values else { continue };
        let ops: Vec<&[f64]> = ins
            .iter()
            .map(|m| m[key].values.as_deref().unwrap())
            .collect();
        let w = want(key, &ops);
        assert_eq!(w.len(), values.len(), "{key}");
        for (i, (g, w)) in values.iter().zip(&w).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{key}[{i}]: {g} vs reference {w}"
            );
        }
        checked += 1;
    }
    assert!(checked > 1000, "only {checked} tensors checked");
}

/// F1 x (1-a) + F2 x a, per element (inputs: base, F1, F2, ...).
fn ws_of(x: &[&[f64]], a: f64) -> Vec<f64> {
    (0..x[0].len())
        .map(|i| (1.0 - a) * x[1][i] + a * x[2][i])
        .collect()
}

fn for_both(f: impl Fn(&Family)) {
    for arch in [arch("sd1"), arch("sdxl")] {
        f(&family(arch));
    }
}

#[test]
fn weighted_sum_add_difference_triple_and_twice() {
    for_both(|fam| {
        let got = merged(fam, "OUT = F1 x 0.7 + F2 x 0.3\n", &[]);
        check(fam, &got, |_, x| {
            (0..x[0].len())
                .map(|i| 0.7 * x[1][i] + 0.3 * x[2][i])
                .collect()
        });
        let got = merged(fam, "OUT = ad(F1, F2, B, 0.6)\n", &[]);
        check(fam, &got, |_, x| {
            (0..x[0].len())
                .map(|i| x[1][i] + 0.6 * (x[2][i] - x[0][i]))
                .collect()
        });
        let got = merged(
            fam,
            "OUT = triple_sum(F1, F2, F3, alpha=0.2, beta=0.3)\n",
            &[],
        );
        check(fam, &got, |_, x| {
            (0..x[0].len())
                .map(|i| 0.5 * x[1][i] + 0.2 * x[2][i] + 0.3 * x[3][i])
                .collect()
        });
        let got = merged(fam, "OUT = sum_twice(F1, F2, F3, 0.4, 0.25)\n", &[]);
        check(fam, &got, |_, x| {
            (0..x[0].len())
                .map(|i| 0.75 * (0.6 * x[1][i] + 0.4 * x[2][i]) + 0.25 * x[3][i])
                .collect()
        });
        let got = merged(fam, "OUT = avg(F1, F2, F3, weights=(1, 2, 1))\n", &[]);
        check(fam, &got, |_, x| {
            (0..x[0].len())
                .map(|i| 0.25 * x[1][i] + 0.5 * x[2][i] + 0.25 * x[3][i])
                .collect()
        });
    });
}

#[test]
fn block_weights_apply_exactly_to_their_blocks() {
    for_both(|fam| {
        let order: Vec<String> = fam
            .arch
            .merge_blocks()
            .iter()
            .map(|b| b.to_string())
            .collect();
        let (got, alpha) = merged_by_list(fam, order.len());
        let depth = unet_depth(fam.arch);
        check(fam, &got, |key, x| {
            let block = reference_block(key, depth);
            let a = alpha[order
                .iter()
                .position(|b| *b == block)
                .unwrap_or_else(|| panic!("{key} -> {block}"))];
            ws_of(x, a)
        });
    });
}

#[test]
fn component_swap_takes_the_component_whole() {
    let fam = family(arch("sdxl"));
    let got = merged(&fam, "OUT = swap(F1, F2, te)\n", &[]);
    check(&fam, &got, |key, x| {
        let te = key.starts_with("conditioner.embedders.");
        if te { x[2].to_vec() } else { x[1].to_vec() }
    });
}

/// The deltas of models 1.. against model 0, each cut to its top-k (ckpt-diff's rule: the
/// ⌈k·n⌉ largest, by a full sort).
pub(crate) fn top_k(x: &[&[f64]], k: f64) -> Vec<Vec<f64>> {
    let n = x[0].len();
    x[1..]
        .iter()
        .map(|m| {
            let d: Vec<f64> = (0..n).map(|i| m[i] - x[0][i]).collect();
            let mut mags: Vec<f32> = d.iter().map(|v| v.abs() as f32).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let keep = ((k * n as f64).ceil() as usize).clamp(1, n);
            let t = if k >= 1.0 { 0.0 } else { mags[keep - 1] };
            d.iter()
                .map(|&v| if (v.abs() as f32) >= t { v } else { 0.0 })
                .collect()
        })
        .collect()
}

/// The filtered deltas: each zeroed where its sign is not the elected one (Σ wᵢ·sign(δᵢ)
/// for a count vote, Σ wᵢδᵢ for magnitude; a sum of 0 elects +).
pub(crate) fn filter(deltas: &[Vec<f64>], w: &[f64], count: bool) -> Vec<Vec<f64>> {
    let n = deltas[0].len();
    let mut out = deltas.to_vec();
    for i in 0..n {
        let total: f64 = deltas
            .iter()
            .zip(w)
            .map(|(d, w)| {
                if count {
                    w * d[i].signum() * (d[i] != 0.0) as u8 as f64
                } else {
                    w * d[i]
                }
            })
            .sum();
        let elected = if total >= 0.0 { 1.0 } else { -1.0 };
        for d in out.iter_mut() {
            if !(d[i] != 0.0 && d[i].signum() == elected) {
                d[i] = 0.0;
            }
        }
    }
    out
}

/// TIES as the paper and mergekit describe it, written out per element with a full sort:
/// the top-k deltas, the sign of their weighted sum elected, the agreeing ones averaged.
pub(crate) fn ties_reference(x: &[&[f64]], k: f64, weights: &[f64], lambda: f64) -> Vec<f64> {
    let g = filter(&top_k(x, k), weights, false);
    (0..x[0].len())
        .map(|i| {
            let num: f64 = g.iter().zip(weights).map(|(d, w)| w * d[i]).sum();
            let den: f64 = g
                .iter()
                .zip(weights)
                .filter(|(d, _)| d[i] != 0.0)
                .map(|(_, w)| w)
                .sum();
            x[0][i] + lambda * if den == 0.0 { 0.0 } else { num / den }
        })
        .collect()
}

#[test]
fn ties_matches_its_definition() {
    for_both(|fam| {
        let got = merged(
            fam,
            "OUT = ties(B, F1, F2, F3, k=0.3, lambda=0.9, weights=(1, 0.5, 2))\n",
            &[],
        );
        check(fam, &got, |_, x| {
            ties_reference(x, 0.3, &[1.0, 0.5, 2.0], 0.9)
        });
    });
}

#[test]
fn dare_matches_its_definition_and_is_reproducible() {
    let fam = family(arch("sd1"));
    let got = merged(
        &fam,
        "OUT = dare(B, F1, F2, p=0.7, seed=42, weights=(0.6, 0.4))\n",
        &[],
    );
    check(&fam, &got, |key, x| {
        let keep = 0.3;
        let masks: Vec<_> = (0..2)
            .map(|j| ckpt_ops::merge::methods::dare::dare_stream(42, key, j))
            .collect();
        (0..x[0].len())
            .map(|i| {
                let mut v = x[0][i];
                for (j, w) in [0.6, 0.4].iter().enumerate() {
                    if masks[j].uniform(i as u64) < keep {
                        v += w * (x[j + 1][i] - x[0][i]) / keep;
                    }
                }
                v
            })
            .collect()
    });
    // Same seed, any thread count: the same bytes. Another seed: other bytes.
    let recipe = "OUT = dare_ties(B, F1, F2, F3, p=0.5, seed=7)\n";
    let run = |threads: &str, seed: &str| -> Vec<u8> {
        let r = recipe.replace("seed=7", &format!("seed={seed}"));
        let text = format!(
            "B = \"{}\"\nF1 = \"{}\"\nF2 = \"{}\"\nF3 = \"{}\"\n{r}",
            s(&fam.base),
            s(&fam.fts[0]),
            s(&fam.fts[1]),
            s(&fam.fts[2])
        );
        let rp = fam.dir.path("d.recipe");
        std::fs::write(&rp, text).unwrap();
        let out = fam.dir.path(&format!("d-{threads}-{seed}.safetensors"));
        run_ok(&words(
            "--threads {} merge {} -o {} --no-input-hashes -q",
            &[threads, s(&rp), s(&out)],
        ));
        std::fs::read(&out).unwrap()
    };
    let a = run("1", "7");
    assert_eq!(a, run("2", "7"), "DARE output depends on the thread count");
    assert_eq!(a, run("3", "7"));
    assert_ne!(a, run("2", "8"), "another seed gives another mask");
}

/// DARE checked without its random stream: every output element is either the base or the
/// base plus the delta rescaled by 1/(1-p), nothing else; each tensor keeps 1-p of its
/// elements within binomial bounds; and the masks of two same-shaped tensors, or of two
/// seeds, agree only as often as independent coin flips do (p² + (1-p)²), where one mask
/// reused would agree always.
#[test]
fn dare_masks_keep_their_share_independently() {
    let fam = family(arch("sd1"));
    let keep = 0.3;
    let ins = inputs(&fam);
    // Per tensor, per element: Some(kept) where the delta is not zero.
    let masks = |seed: u64| -> BTreeMap<String, Vec<Option<bool>>> {
        let got = merged(
            &fam,
            &format!("OUT = dare(B, F1, p=0.7, seed={seed})\n"),
            &[],
        );
        got.iter()
            .filter_map(|(key, t)| Some((key, t.values.as_ref()?)))
            .map(|(key, g)| {
                let b = ins[0][key].values.as_ref().unwrap();
                let f = ins[1][key].values.as_ref().unwrap();
                let mask = (0..g.len())
                    .map(|i| {
                        let d = f[i] - b[i];
                        if d == 0.0 {
                            return None;
                        }
                        let close = |want: f64| (g[i] - want).abs() <= 1e-6 * want.abs().max(1.0);
                        let kept = close(b[i] + d / keep);
                        let dropped = close(b[i]);
                        assert!(
                            kept != dropped,
                            "{key}[{i}] = {} is neither the base {} nor base + delta/(1-p) {}",
                            g[i],
                            b[i],
                            b[i] + d / keep
                        );
                        Some(kept)
                    })
                    .collect();
                (key.clone(), mask)
            })
            .collect()
    };
    let m42 = masks(42);
    let (mut kept, mut decided) = (0usize, 0usize);
    for (key, mask) in &m42 {
        let k = mask.iter().filter(|m| **m == Some(true)).count();
        let n = mask.iter().filter(|m| m.is_some()).count();
        if n >= 1000 {
            let sd = (keep * (1.0 - keep) / n as f64).sqrt();
            let share = k as f64 / n as f64;
            assert!(
                (share - keep).abs() <= 6.0 * sd,
                "{key}: kept {share} of {n}"
            );
        }
        kept += k;
        decided += n;
    }
    assert!(decided > 1_000_000, "only {decided} elements decided");
    let share = kept as f64 / decided as f64;
    assert!((share - keep).abs() < 0.002, "kept {share} overall");

    // Agreement of two masks over the elements both decide.
    let agreement = |a: &[Option<bool>], b: &[Option<bool>], tally: &mut (usize, usize)| {
        for (x, y) in a.iter().zip(b) {
            if let (Some(x), Some(y)) = (x, y) {
                tally.0 += usize::from(x == y);
                tally.1 += 1;
            }
        }
    };
    let independent = keep * keep + (1.0 - keep) * (1.0 - keep);
    let assert_independent = |(same, n): (usize, usize), what: &str| {
        let sd = (independent * (1.0 - independent) / n as f64).sqrt();
        let rate = same as f64 / n as f64;
        assert!(n > 100_000, "{what}: only {n} elements");
        assert!(
            (rate - independent).abs() <= 6.0 * sd,
            "{what}: masks agree on {rate} of {n} elements, independent ones on {independent}"
        );
    };
    // Tensors of one shape, side by side.
    let mut by_shape: BTreeMap<Vec<usize>, Vec<&String>> = BTreeMap::new();
    for key in m42.keys() {
        by_shape
            .entry(ins[0][key].shape.clone())
            .or_default()
            .push(key);
    }
    let mut tally = (0, 0);
    for keys in by_shape.values() {
        for pair in keys.windows(2) {
            agreement(&m42[pair[0]], &m42[pair[1]], &mut tally);
        }
    }
    assert_independent(tally, "same-shaped tensors");
    // The same tensors under another seed.
    let m7 = masks(7);
    let mut tally = (0, 0);
    for (key, mask) in &m42 {
        agreement(mask, &m7[key], &mut tally);
    }
    assert_independent(tally, "seeds 42 and 7");
    // The same seed: the same mask.
    let again = masks(42);
    assert!(m42 == again, "a seed must give the same masks every time");
}

#[test]
fn model_stock_matches_its_closed_form() {
    for_both(|fam| {
        let got = merged(fam, "OUT = model_stock(B, F1, F2, F3)\n", &[]);
        check(fam, &got, |_, x| {
            let n = x[0].len();
            let d: Vec<Vec<f64>> = x[1..]
                .iter()
                .map(|m| (0..n).map(|i| m[i] - x[0][i]).collect())
                .collect();
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
            let mut cos = 0.0;
            for (i, j) in [(0, 1), (0, 2), (1, 2)] {
                let (a, b, ab) = (dot(&d[i], &d[i]), dot(&d[j], &d[j]), dot(&d[i], &d[j]));
                cos += if a == 0.0 || b == 0.0 {
                    0.0
                } else {
                    ab / (a * b).sqrt()
                };
            }
            cos /= 3.0;
            let t = if (1.0 + 2.0 * cos).abs() < 1e-12 {
                0.0
            } else {
                3.0 * cos / (1.0 + 2.0 * cos)
            };
            (0..n)
                .map(|i| t * (x[1][i] + x[2][i] + x[3][i]) / 3.0 + (1.0 - t) * x[0][i])
                .collect()
        });
    });
}

#[test]
fn geometric_median_matches_weiszfeld() {
    let fam = family(arch("sd1"));
    let got = merged(&fam, "OUT = geomedian(F1, F2, F3, B)\n", &[]);
    check(&fam, &got, |_, x| {
        let n = x[0].len();
        let ms: Vec<&[f64]> = vec![x[1], x[2], x[3], x[0]];
        let mut z: Vec<f64> = (0..n)
            .map(|i| ms.iter().map(|m| m[i]).sum::<f64>() / 4.0)
            .collect();
        let mut objective = f64::INFINITY;
        for _ in 0..100 {
            let dist: Vec<f64> = ms
                .iter()
                .map(|m| (0..n).map(|i| (m[i] - z[i]).powi(2)).sum::<f64>().sqrt())
                .collect();
            let new_objective: f64 = dist.iter().sum();
            let c: Vec<f64> = dist.iter().map(|d| 1.0 / d.max(1e-6)).collect();
            let cs: f64 = c.iter().sum();
            z = (0..n)
                .map(|i| ms.iter().zip(&c).map(|(m, ci)| ci / cs * m[i]).sum())
                .collect();
            if (objective - new_objective).abs() <= 1e-12 * new_objective {
                break;
            }
            objective = new_objective;
        }
        z
    });
}

#[test]
fn train_difference_matches_supermerger() {
    let fam = family(arch("sd1"));
    let got = merged(&fam, "OUT = train_diff(F1, F2, B, alpha=0.5)\n", &[]);
    check(&fam, &got, |_, x| {
        (0..x[0].len())
            .map(|i| {
                let (a, b, c) = (x[1][i], x[2][i], x[0][i]);
                let den = (b - a).abs() + (b - c).abs();
                let s = if den == 0.0 { 0.0 } else { (b - a).abs() / den };
                a + (b - c) * s * 1.8 * 0.5
            })
            .collect()
    });
}

/// The BlessingMix recipe, with generated stand-ins for its models: as one file in one pass,
/// and step by step through intermediate files, the results agree.
#[test]
fn blessingmix_in_one_pass_equals_its_steps() {
    let d = Dir::new();
    let arch = arch("sd1");
    let lay = layout(arch, 16, FloatFormat::F16);
    let base = Synthetic::base(arch, 3);
    let names = [
        "v1-5-pruned-emaonly",
        "pyro_pov_a",
        "pyro_pov_b",
        "analogDiffusion",
        "F222",
        "OpenBra",
        "Evt",
        "dreamshaper_6",
        "BlessingEnc",
    ];
    let mut bindings = String::new();
    for (i, n) in names.iter().enumerate() {
        let m = if i == 0 {
            base.clone()
        } else {
            base.plus_delta(200 + i as u64, family::finetune_profile(arch, 3, i, 0.15))
        };
        let p = d.model(&format!("{n}.safetensors"), &lay, &m);
        bindings.push_str(&format!("{n} = {}\n", s(&p)));
    }
    let steps = [
        ("pyAB", "pyro_pov_a x 0.5 + pyro_pov_b x 0.5", ""),
        ("MERGE1", "analogDiffusion x 0.85 + pyAB x 0.15", ""),
        ("MERGE1Fix", "MERGE1 x 1", ""),
        ("MERGE2", "MERGE1Fix + (F222 - v1-5-pruned-emaonly) x 1", ""),
        ("TEMP1", "OpenBra + (Evt - v1-5-pruned-emaonly) x 0.08", ""),
        ("TEMP6", "TEMP1 x 0.6 + MERGE2 x 0.4", ""),
        (
            "TEMP7",
            "TEMP6 x (1-alpha) + dreamshaper_6 x alpha",
            "    alpha = (0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0.15,0.15,0.15,0.15,0.15,0.15)\n",
        ),
        ("BlessingMixV0", "TEMP7 x 1", ""),
        (
            "FINAL",
            "BlessingMixV0 x (1-alpha) + BlessingEnc x alpha",
            "    alpha = {BASE: 1}\n",
        ),
    ];
    let mut one = bindings.clone();
    for (n, e, p) in &steps {
        one.push_str(&format!("{n} = {e}\n{p}"));
    }
    let rp = d.path("blessingmix.recipe");
    std::fs::write(&rp, &one).unwrap();
    let one_pass = d.path("one-pass.safetensors");
    run_ok(&words(
        "merge {} -o {} --dtype f32 --no-input-hashes -q",
        &[s(&rp), s(&one_pass)],
    ));

    // Step by step: each step its own merge, intermediates stored in f64.
    let mut previous: Vec<String> = Vec::new();
    let mut last = PathBuf::new();
    for (n, e, p) in &steps {
        let mut text = bindings.clone();
        for prev in &previous {
            text.push_str(&format!(
                "{prev} = {}\n",
                s(&d.path(&format!("{prev}.safetensors")))
            ));
        }
        text.push_str(&format!("{n} = {e}\n{p}"));
        let rp = d.path(&format!("{n}.recipe"));
        std::fs::write(&rp, text).unwrap();
        last = d.path(&format!("{n}.safetensors"));
        let dtype = if *n == "FINAL" { "f32" } else { "f64" };
        run_ok(&words(
            "merge {} -o {} --dtype {} --no-input-hashes -q",
            &[s(&rp), s(&last), dtype],
        ));
        previous.push(n.to_string());
    }
    let (a, b) = (reference_map(&one_pass), reference_map(&last));
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        match (&t.values, &b[k].values) {
            (Some(x), Some(y)) => assert!(
                x.iter()
                    .zip(y)
                    .all(|(p, q)| (p - q).abs() <= 1e-6 * q.abs().max(1.0)),
                "{k}"
            ),
            (None, None) => {} // Integer tensors: copied, checked in another test.
            _ => panic!("{k}: float in one output, integer in the other"),
        }
    }
    // FINAL's text encoder is BlessingEnc's, exactly.
    let enc = reference_map(&d.path("BlessingEnc.safetensors"));
    let key = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
    assert_eq!(a[key].values, enc[key].values);
}

#[test]
fn integers_missing_keys_and_provenance() {
    let d = Dir::new();
    let arch = arch("sd1");
    let base = Synthetic::base(arch, 5);
    let full = d.model(
        "full.safetensors",
        &layout(arch, 32, FloatFormat::F16),
        &base.plus_delta(9, ckpt_ops::synth::uniform(arch, 0.1)),
    );
    let mut no_vae = layout(arch, 32, FloatFormat::BF16);
    no_vae.components = vec![
        ckpt_core::catalog::Component::named("unet").unwrap(),
        ckpt_core::catalog::Component::named("te1").unwrap(),
    ];
    let partial = d.model("partial.safetensors", &no_vae, &base);
    let out = d.path("m.safetensors");
    let json = run_json(&words(
        "merge ws {} {} --alpha 0.5 -o {}",
        &[s(&full), s(&partial), s(&out)],
    ));
    // VAE keys come from the one model that has them, unchanged, and are listed.
    assert_eq!(json["copied"].as_array().unwrap().len(), 248);
    let (o, f) = (reference_map(&out), reference_map(&full));
    let vae = "first_stage_model.decoder.conv_in.weight";
    assert_eq!(o[vae].values, f[vae].values);
    // position_ids stay int64 0..76.
    let c = ckpt_read::Checkpoint::open(&out).unwrap();
    let pos = c
        .get("cond_stage_model.transformer.text_model.embeddings.position_ids")
        .unwrap();
    assert_eq!(pos.dtype, ckpt_read::Dtype::I64);
    let ids: Vec<i64> = c
        .data(pos)
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ids, (0..77).collect::<Vec<_>>());
    // Output dtype follows the first input by default.
    assert_eq!(
        c.get("model.diffusion_model.out.2.weight").unwrap().dtype,
        ckpt_read::Dtype::F16
    );
    // Provenance: the inputs' SHA-256 (checked with an independent hasher) and the recipe.
    let models: serde_json::Value =
        serde_json::from_str(c.metadata_value("sd_merge_models").unwrap()).unwrap();
    for p in [&full, &partial] {
        let h = sha256_of(p);
        assert_eq!(models[&h]["name"], p.file_name().unwrap().to_str().unwrap());
    }
    assert!(
        c.metadata_value("ckpt_diff.recipe")
            .unwrap()
            .contains("x (1-alpha)")
    );
    // Merging the merge keeps the ancestry.
    let out2 = d.path("m2.safetensors");
    run_ok(&words(
        "merge ws {} {} --alpha 0.5 -o {} -q",
        &[s(&out), s(&full), s(&out2)],
    ));
    let c2 = ckpt_read::Checkpoint::open(&out2).unwrap();
    let models2: serde_json::Value =
        serde_json::from_str(c2.metadata_value("sd_merge_models").unwrap()).unwrap();
    assert!(
        models2.get(sha256_of(&partial)).is_some(),
        "grandparent kept"
    );
    assert!(models2[sha256_of(&out)]["sd_merge_recipe"]["type"] == "ckpt-diff");
    // With --missing skip, the VAE is left out.
    let out3 = d.path("m3.safetensors");
    let json = run_json(&words(
        "merge ws {} {} --alpha 0.5 -o {} --missing skip",
        &[s(&full), s(&partial), s(&out3)],
    ));
    assert_eq!(json["skipped"].as_array().unwrap().len(), 248);
}

pub(crate) fn sha256_of(p: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn refusals_and_recipe_errors() {
    let d = Dir::new();
    let a = d.model(
        "a.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 1),
    );
    let b = d.model(
        "b.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 2),
    );
    // The output may not be an input, even with --force.
    let out = ckpt_diff()
        .args([
            "merge",
            "ws",
            s(&a),
            s(&b),
            "--alpha",
            "0.5",
            "-o",
            s(&a),
            "--force",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("also an input"));
    // An existing output needs --force.
    let o = d.path("o.safetensors");
    std::fs::write(&o, b"keep me").unwrap();
    let out = ckpt_diff()
        .args(["merge", "ws", s(&a), s(&b), "--alpha", "0.5", "-o", s(&o)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(&o).unwrap(), b"keep me");
    // Errors point into the recipe.
    let rp = d.path("bad.recipe");
    std::fs::write(
        &rp,
        format!(
            "A = {}\nB = {}\nOUT = A x (1-alpha) + B x alpha\n    alpha = (0.5, 0.5)\n",
            s(&a),
            s(&b)
        ),
    )
    .unwrap();
    let out = ckpt_diff()
        .args(["merge", s(&rp), "-o", s(&d.path("x.safetensors"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("line 4") && err.contains("takes 26"), "{err}");
    std::fs::write(&rp, format!("A = {}\nOUT = A x\n", s(&a))).unwrap();
    let out = ckpt_diff()
        .args(["merge", s(&rp), "-o", s(&d.path("x.safetensors"))])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2, column"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Different architectures.
    let xl = d.model(
        "xl.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 1),
    );
    let out = ckpt_diff()
        .args([
            "merge",
            "ws",
            s(&a),
            s(&xl),
            "--alpha",
            "0.5",
            "-o",
            s(&d.path("y.safetensors")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one architecture"));
}

/// F1 and F2 merged by a block-weight list of `n` values, each its own (i / (n + 3));
/// returns the merge and the list.
fn merged_by_list(fam: &Family, n: usize) -> (BTreeMap<String, RefTensor>, Vec<f64>) {
    let alpha: Vec<f64> = (0..n)
        .map(|i| (i as f64 + 1.0) / (n as f64 + 3.0))
        .collect();
    let list: Vec<String> = alpha.iter().map(|a| a.to_string()).collect();
    let got = merged(
        fam,
        &format!(
            "OUT = F1 x (1-alpha) + F2 x alpha\n    alpha = ({})\n",
            list.join(",")
        ),
        &[],
    );
    (got, alpha)
}

/// SuperMerger's Flux list (`BLOCKIDFLUX`), written out here: CLIP, T5, IN, D00..D18,
/// S00..S37, OUT. The VAE has no entry and stays the first model's.
#[test]
fn flux_61_value_block_list() {
    let fam = family(arch("flux"));
    let mut order = vec!["CLIP".to_string(), "T5".into(), "IN".into()];
    order.extend((0..19).map(|i| format!("D{i:02}")));
    order.extend((0..38).map(|i| format!("S{i:02}")));
    order.push("OUT".into());
    assert_eq!(order.len(), 61);
    let (got, alpha) = merged_by_list(&fam, 61);
    check(&fam, &got, |key, x| {
        let a = match reference_dit_block(key, true) {
            Some(b) => alpha[order.iter().position(|o| *o == b).unwrap()],
            None => 0.0,
        };
        ws_of(x, a)
    });
}

/// Qwen-Image's 66 sliders in the named form and Z-Image's 39 values as a list: each
/// block's tensors take their weight; the text encoder and the VAE, which no list entry
/// weighs (ComfyUI's sliders cover the diffusion model alone), stay the first model's.
#[test]
fn models_2026_block_weights() {
    let fam = family(arch("qwen-image"));
    let got = merged(
        &fam,
        "OUT = F1 x (1-alpha) + F2 x alpha\n    alpha = {IMG_IN: 0.1, TXT_NORM: 0.2, TXT_IN: 0.3, TIME_TEXT_EMBED: 0.4, B00..B29: 0.25, B30..B59: 0.6, NORM_OUT: 0.9, PROJ_OUT: 1}\n",
        &[],
    );
    check(&fam, &got, |key, x| {
        let row = reference_2026_row(arch("qwen-image"), key).unwrap();
        let a = match row.as_str() {
            "IMG_IN" => 0.1,
            "TXT_NORM" => 0.2,
            "TXT_IN" => 0.3,
            "TIME_TEXT_EMBED" => 0.4,
            "NORM_OUT" => 0.9,
            "PROJ_OUT" => 1.0,
            "QWEN25_7B" | "VAE" => 0.0,
            b => {
                let n: usize = b[1..].parse().unwrap();
                if n <= 29 { 0.25 } else { 0.6 }
            }
        };
        ws_of(x, a)
    });

    let fam = family(arch("z-image"));
    let mut order: Vec<String> = ["X_EMBEDDER", "PAD_TOKENS", "CAP_EMBEDDER", "T_EMBEDDER"]
        .map(String::from)
        .into();
    order.extend((0..2).map(|i| format!("NR{i:02}")));
    order.extend((0..2).map(|i| format!("CR{i:02}")));
    order.extend((0..30).map(|i| format!("L{i:02}")));
    order.push("FINAL_LAYER".into());
    assert_eq!(order.len(), 39);
    let (got, alpha) = merged_by_list(&fam, 39);
    check(&fam, &got, |key, x| {
        let row = reference_2026_row(arch("z-image"), key).unwrap();
        let a = order
            .iter()
            .position(|o| *o == row)
            .map_or(0.0, |i| alpha[i]);
        ws_of(x, a)
    });
}

/// The named form on SD3.5 large's 38 joint blocks; blocks it does not name take 0.
#[test]
fn sd35_named_block_weights() {
    let fam = family(arch("sd35l"));
    let got = merged(
        &fam,
        "OUT = F1 x (1-alpha) + F2 x alpha\n    alpha = {J00..J12: 0.25, J13..J37: 0.6, OUT: 1, IN: 0.1}\n",
        &[],
    );
    check(&fam, &got, |key, x| {
        let b = reference_dit_block(key, false).unwrap();
        let a = match b.as_str() {
            "IN" => 0.1,
            "OUT" => 1.0,
            "BASE" => 0.0,
            j => {
                let n: usize = j[1..].parse().unwrap();
                if n <= 12 { 0.25 } else { 0.6 }
            }
        };
        ws_of(x, a)
    });
}

/// (value, code) of every finite FP8 code, decoded independently, by value.
fn fp8_table(e4m3: bool) -> Vec<(f64, u8)> {
    let mut t: Vec<(f64, u8)> = (0..=255u8)
        .map(|c| (decode_fp8(c, e4m3), c))
        .filter(|(v, _)| v.is_finite())
        .collect();
    t.sort_by(|a, b| a.0.total_cmp(&b.0));
    t
}

/// The FP8 value nearest to `x` (ties to the even code), saturating at the largest finite
/// value: the closest of the table's neighbours of `x`.
fn nearest_in(table: &[(f64, u8)], x: f64) -> f64 {
    let i = table.partition_point(|(v, _)| *v < x);
    let mut best = (f64::INFINITY, 0.0, 0u8);
    for &(v, code) in &table[i.saturating_sub(2)..(i + 2).min(table.len())] {
        let d = (v - x).abs();
        if d < best.0 || (d == best.0 && code & 1 == 0 && best.2 & 1 == 1) {
            best = (d, v, code);
        }
    }
    best.1
}

/// A merge written as plain FP8 reads back as the exact merge rounded to the nearest FP8
/// value; written as scaled FP8, each matrix has a fresh scale (its largest magnitude over
/// 448) and reads back within E4M3's precision.
#[test]
fn merges_to_fp8_round_trip() {
    let fam = family(arch("flux"));
    // Weights with short binary fractions: the sum of F16 inputs is exact in f64, so a
    // tie between two FP8 values is a true tie, rounded to the even code by both sides.
    let recipe = "OUT = F1 x 0.625 + F2 x 0.375\n";
    let exact = |x: &[&[f64]]| -> Vec<f64> {
        (0..x[0].len())
            .map(|i| 0.625 * x[1][i] + 0.375 * x[2][i])
            .collect()
    };
    for (dtype, e4m3) in [("f8_e4m3", true), ("f8_e5m2", false)] {
        let got = merged_as(&fam, recipe, dtype, &[]);
        let table = fp8_table(e4m3);
        check(&fam, &got, |_, x| {
            exact(x).iter().map(|&w| nearest_in(&table, w)).collect()
        });
    }
    let out = fam.dir.path("out.safetensors");
    let got = merged_as(&fam, recipe, "scaled-fp8", &[]);
    let raw = reference_map(&out);
    let ins = inputs(&fam);
    let mut scaled = 0;
    for (key, t) in &got {
        let Some(values) = &t.values else { continue };
        let ops: Vec<&[f64]> = ins
            .iter()
            .map(|m| m[key].values.as_deref().unwrap())
            .collect();
        let want = exact(&ops);
        let scale_key = format!("{}.scale_weight", key.trim_end_matches(".weight"));
        let Some(scale) = raw.get(&scale_key) else {
            // Not scaled: stored wide enough for the 1e-6 check of the other tests.
            continue;
        };
        scaled += 1;
        assert_eq!(raw[key].shape, t.shape);
        let scale = scale.values.as_ref().unwrap()[0];
        let amax = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            (scale - amax / 448.0).abs() <= 1e-6 * scale,
            "{key}: scale {scale} vs amax/448 {}",
            amax / 448.0
        );
        for (g, w) in values.iter().zip(&want) {
            // Three mantissa bits: half a step is 2^-4 of the value; below 2^-6·scale the
            // step is fixed (subnormals).
            let tol = 2f64.powi(-4) * w.abs() + 2f64.powi(-10) * scale;
            assert!((g - w).abs() <= tol, "{key}: {g} vs {w}");
        }
    }
    assert!(scaled > 300, "only {scaled} scaled tensors");
    assert!(raw.keys().any(|k| k.ends_with("scaled_fp8")), "the marker");
}

/// Finite inputs never give Inf or NaN: a recipe far past a format's range saturates at its
/// largest finite value.
#[test]
fn out_of_range_merges_saturate() {
    let fam = family(arch("flux"));
    for (dtype, max) in [
        ("f16", 65504.0),
        ("bf16", half::bf16::MAX.to_f64()),
        ("f8_e4m3", 448.0),
        ("f8_e5m2", 57344.0),
        ("scaled-fp8", f64::INFINITY),
    ] {
        let got = merged_as(&fam, "OUT = ad(F1, F2, B, 1e300)\n", dtype, &[]);
        let mut saturated = 0;
        for (key, t) in &got {
            let Some(v) = &t.values else { continue };
            for x in v {
                assert!(x.is_finite(), "{dtype} {key}: {x}");
                assert!(x.abs() <= max, "{dtype} {key}: {x}");
                if x.abs() == max {
                    saturated += 1;
                }
            }
        }
        if max.is_finite() {
            assert!(saturated > 1000, "{dtype}: {saturated} values at the limit");
        }
    }
}

/// An SDXL v-prediction model (NoobAI's markers `v_pred`, `ztsnr`, `edm_vpred.*`) merged
/// with an eps model keeps the markers, with their values, whichever side carries them;
/// the output reads as v-prediction.
#[test]
fn vpred_markers_survive_a_merge() {
    let d = Dir::new();
    let mut v = layout(arch("sdxl"), 32, FloatFormat::F16);
    v.vpred_markers = true;
    let vpred = d.model("vpred.safetensors", &v, &Synthetic::base(arch("sdxl"), 3));
    let eps = d.model(
        "eps.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 4),
    );
    let markers = [
        "v_pred",
        "ztsnr",
        "edm_vpred.sigma_min",
        "edm_vpred.sigma_max",
    ];
    let source = read_raw(&vpred).0;
    for (i, (a, b)) in [(&vpred, &eps), (&eps, &vpred)].into_iter().enumerate() {
        let out = d.path(&format!("m{i}.safetensors"));
        run_ok(&words(
            "merge ws {} {} --alpha 0.5 -o {} -q --no-input-hashes",
            &[s(a), s(b), s(&out)],
        ));
        let (tensors, _) = read_raw(&out);
        for m in markers {
            let got = tensors.iter().find(|t| t.name == m);
            let want = source.iter().find(|t| t.name == m).unwrap();
            let got = got.unwrap_or_else(|| panic!("merge {i}: {m} dropped"));
            assert_eq!((&got.dtype, &got.data), (&want.dtype, &want.data), "{m}");
        }
        let j = run_json(&["inspect", s(&out)]);
        assert!(j["variants"].to_string().contains("v-prediction"), "{j}");
    }
}

/// Scaled FP8 scales linear layers only, as ComfyUI's scaled-fp8 operations do (they
/// replace `Linear`; a conv stored scaled would load without its scale): an SD1 merge to
/// scaled FP8 scales the U-Net's 2-D weights, and its convs stay wide and unscaled.
#[test]
fn scaled_fp8_scales_linear_weights_only() {
    let fam = family(arch("sd1"));
    merged_as(&fam, "OUT = F1 x 0.5 + F2 x 0.5\n", "scaled-fp8", &[]);
    let (tensors, _) = read_raw(&fam.dir.path("out.safetensors"));
    let names: std::collections::HashSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let (mut linear, mut conv) = (0, 0);
    for t in &tensors {
        if !t.name.starts_with("model.diffusion_model.") || !t.name.ends_with(".weight") {
            continue;
        }
        let scale = format!("{}.scale_weight", t.name.trim_end_matches(".weight"));
        match t.shape.len() {
            2 => {
                assert_eq!(t.dtype, "F8_E4M3", "{}", t.name);
                assert!(names.contains(scale.as_str()), "{}", t.name);
                linear += 1;
            }
            4 => {
                assert_eq!(t.dtype, "F16", "{}", t.name);
                assert!(!names.contains(scale.as_str()), "{} scaled", t.name);
                conv += 1;
            }
            _ => {}
        }
    }
    assert!(
        linear > 50 && conv > 50,
        "{linear} linear, {conv} conv weights"
    );
}

/// The cache is where the command line says: `--no-cache` reads and writes nothing; by
/// default the inputs' SHA-256 are kept (and a second merge takes them from there, with the
/// same provenance as a hashed one).
#[test]
fn no_cache_writes_nothing_and_the_cache_keeps_input_hashes() {
    let fam = family(arch("sd1"));
    let cache = fam.dir.path("cache");
    let merge = |out: &str, no_cache: bool| {
        let out = fam.dir.path(out);
        let mut c = ckpt_diff();
        c.env(ckpt_read::env::XDG_CACHE_HOME.name, &cache);
        c.args([
            "merge",
            "ws",
            s(&fam.fts[0]),
            s(&fam.fts[1]),
            "--alpha",
            "0.3",
        ]);
        c.args(["-o", s(&out), "-q", "--json"]);
        if no_cache {
            c.arg("--no-cache");
        }
        let o = c.output().expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (j["inputs"].clone(), std::fs::read(out).unwrap())
    };
    let (hashed, uncached_file) = merge("a.safetensors", true);
    assert!(!cache.exists(), "--no-cache wrote {}", cache.display());
    let sha = |p: &PathBuf| {
        use sha2::Digest;
        ckpt_ops::hash::hex(&sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    assert_eq!(hashed[0][1], sha(&fam.fts[0]));
    let (first, _) = merge("b.safetensors", false);
    assert!(cache.join("ckpt-diff/sha256.tsv").exists());
    let (second, cached_file) = merge("c.safetensors", false);
    assert_eq!(first, hashed);
    assert_eq!(second, hashed);
    // The digests in the metadata are the same whether computed or cached.
    assert_eq!(cached_file, uncached_file);
}
