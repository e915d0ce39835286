//! `fit`, `index` and `lineage` with GGUF inputs (issue #27, item 2): a GGUF is read as its
//! decoded values, so a planted recipe comes back from a GGUF target or GGUF sources as from
//! the safetensors files they were converted from; and a quantized target moves each fitted
//! α by the amount its quantization error implies, computed here from gguf-py's Q8_0
//! quantizer written out independently and a first-order expansion of the cosine.
//!
//! Generated Flux.1 models at 1/32 of the real widths: rows of 96 and 384 values are whole
//! Q8_0 blocks, so every linear weight outside city96's keep list is quantized (at 1/16, SD's
//! rows of 20 and 80 would fall back to F16 and the check would mean little).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_ops::synth::{Profile, Synthetic, family};
use ckpt_read::dtype::FloatFormat;

use crate::fit::{block_profile_of, per_block_of};
use crate::util::*;

const SCALE: u32 = 32;

/// A base, three fine-tunes and a target planted from them, as F16 safetensors (so a GGUF
/// written without `--quant` holds exactly their values: convert.py keeps F16 as F16).
struct Family {
    dir: Dir,
    base: PathBuf,
    fts: Vec<PathBuf>,
    target: PathBuf,
}

/// `target = ft1 x (1 - alpha) + ft2 x alpha`, alpha by row.
fn family_with(alpha: &Profile) -> Family {
    let arch = arch("flux");
    let dir = Dir::new();
    let lay = layout(arch, SCALE, FloatFormat::F16);
    let base = Synthetic::base(arch, 21);
    let fts: Vec<Synthetic> = (1..=3)
        .map(|i| base.plus_delta(500 + i as u64, family::finetune_profile(arch, 21, i, 0.2)))
        .collect();
    let keep: Profile = alpha.iter().map(|a| 1.0 - a).collect();
    let target = Synthetic::lincomb(&[(keep, &fts[0]), (alpha.clone(), &fts[1])]);
    let base_path = dir.model("base.safetensors", &lay, &base);
    let ft_paths = fts
        .iter()
        .enumerate()
        .map(|(i, m)| dir.model(&format!("ft{}.safetensors", i + 1), &lay, m))
        .collect();
    let target_path = dir.model("target.safetensors", &lay, &target);
    Family {
        dir,
        base: base_path,
        fts: ft_paths,
        target: target_path,
    }
}

impl Family {
    /// `src` converted to `NAME.gguf` (`quant`: `--quant`, or none for convert.py's F16).
    fn gguf(&self, src: &Path, name: &str, quant: Option<&str>) -> PathBuf {
        let out = self.dir.path(&format!("{name}.gguf"));
        let mut args = vec!["convert", s(src), "-o", s(&out), "-q"];
        if let Some(q) = quant {
            args.extend(["--quant", q]);
        }
        run_ok(&args);
        out
    }
}

/// `fit --per-block --max-steps 1`: the step's source, operation and alphas by block name.
fn fit(target: &Path, base: &Path, start: &Path, source: &Path) -> BTreeMap<String, f64> {
    let v = run_json(&words(
        "fit --target {} --base {} --start {} --sources {} --per-block --max-steps 1",
        &[s(target), s(base), s(start), s(source)],
    ));
    let step = &v["steps"][0];
    let stem = source.file_stem().unwrap().to_str().unwrap();
    assert_eq!(step["source"], stem, "{v}");
    assert_eq!(step["op"], "weighted_sum", "{v}");
    v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .zip(step["alpha"].as_array().unwrap())
        .map(|(b, a)| (b.as_str().unwrap().to_string(), a.as_f64().unwrap()))
        .collect()
}

/// The diffuser's blocks (the default region): the block list without the text encoders.
fn diffuser_blocks(alphas: &BTreeMap<String, f64>) -> Vec<String> {
    let blocks: Vec<String> = alphas
        .keys()
        .filter(|b| !["CLIP", "T5"].contains(&b.as_str()))
        .cloned()
        .collect();
    assert_eq!(blocks.len(), 59, "IN, D00..D18, S00..S37, OUT: {blocks:?}");
    blocks
}

/// An F16 GGUF holds the target's values exactly, so `fit` recovers the planted per-block
/// alphas from a GGUF target, and from GGUF base, start and source too, as it does from the
/// safetensors files (the same alphas to 1e-9: only the order of the f64 sums differs) and
/// within 1e-3 of the planted ones (what the safetensors fit tests ask).
#[test]
fn test_gguf_fit_recovers_planted_alphas_from_f16_gguf() {
    let arch = arch("flux");
    let planted = per_block_of(arch, 0.1, 2);
    let fam = family_with(&block_profile_of(arch, &planted));
    let st = fit(&fam.target, &fam.base, &fam.fts[0], &fam.fts[1]);
    let t = fam.gguf(&fam.target, "target", None);
    let from_target = fit(&t, &fam.base, &fam.fts[0], &fam.fts[1]);
    let (b, f1, f2) = (
        fam.gguf(&fam.base, "base", None),
        fam.gguf(&fam.fts[0], "ft1", None),
        fam.gguf(&fam.fts[1], "ft2", None),
    );
    let all_gguf = fit(&t, &b, &f1, &f2);
    let names: Vec<String> = arch.merge_blocks().iter().map(|b| b.to_string()).collect();
    for block in diffuser_blocks(&st) {
        let want = planted[names.iter().position(|n| *n == block).unwrap()];
        assert!(
            (st[&block] - want).abs() <= 1e-3,
            "{block}: safetensors fit {} vs planted {want}",
            st[&block]
        );
        for (what, got) in [("GGUF target", &from_target), ("all GGUF", &all_gguf)] {
            assert!(
                (got[&block] - st[&block]).abs() <= 1e-9,
                "{block}: {what} {} vs safetensors {}",
                got[&block],
                st[&block]
            );
        }
    }
}

/// gguf-py 0.19.0's Q8_0 `quantize` then `dequantize` of one tensor's f32 values, written
/// out from `quants.py`: per block of 32, `d = max|x| / 127`, `q = round(x · (1/d))` (half
/// away from zero), `d` stored as f16, `x' = q · d` in f32.
fn q8_0_round_trip(x: &[f32]) -> Vec<f32> {
    assert!(x.len().is_multiple_of(32));
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let d16 = half::f16::from_f32(d).to_f32();
        out.extend(block.iter().map(|v| (v * id).round() * d16));
    }
    out
}

/// Inner products of one block's tensors, in f64.
#[derive(Default)]
struct Products {
    tt: f64,
    td: f64,
    dd: f64,
    te: f64,
    de: f64,
    ee: f64,
}

/// A Q8_0 target moves each block's alpha by the quantization error's share along the
/// direction the alpha moves, and no further.
///
/// Along `C(α) = ft1 + α·D` (`D = ft2 − ft1`) the fit maximises cos(C(α), T). With the
/// target's values `T` replaced by `T + e`, to first order the maximum moves by
/// `δ = ⟨D⊥, e⟩ / ‖D⊥‖²`, where `D⊥ = D − (⟨D,T⟩/‖T‖²)·T` is the part of `D` orthogonal to `T`
/// (the cosine ignores scale): so `|δ| ≤ ‖e‖ / ‖D⊥‖` by Cauchy–Schwarz. `e` is computed here
/// from the target's F16 values with [`q8_0_round_trip`] on the tensors the GGUF stores as
/// Q8_0 (and checked against ckpt-diff's decoding of the file, element for element). The
/// fit of the Q8_0 GGUF must land within the bound of the fit of the F16 target, and on the
/// first-order prediction to 1e-3 of it (measured: the shifts are up to ~1e-4, the bound
/// ~1e-2, second-order terms ~1e-4 of δ). Blocks city96 keeps unquantized (IN, OUT) must not
/// move at all.
#[test]
fn test_gguf_fit_of_a_q8_0_target_moves_alphas_as_its_quantization_error_implies() {
    let arch = arch("flux");
    let planted = per_block_of(arch, 0.1, 5);
    let fam = family_with(&block_profile_of(arch, &planted));
    let st = fit(&fam.target, &fam.base, &fam.fts[0], &fam.fts[1]);
    let q8 = fam.gguf(&fam.target, "target-q8", Some("Q8_0"));
    let got = fit(&q8, &fam.base, &fam.fts[0], &fam.fts[1]);

    // The file's Q8_0 tensors, and its values decoded by ckpt-diff (as f32 safetensors).
    let ckpt = ckpt_read::Checkpoint::open(&q8).unwrap();
    let info = ckpt.gguf().unwrap();
    let q8_names: Vec<String> = info
        .tensors
        .iter()
        .filter(|t| t.ggml_type == ckpt_read::gguf::GgmlType::Q8_0)
        .map(|t| format!("model.diffusion_model.{}", t.name))
        .collect();
    assert!(q8_names.len() > 200, "{} Q8_0 tensors", q8_names.len());
    let decoded_path = fam.dir.path("target-q8-f32.safetensors");
    run_ok(&[
        "convert",
        s(&q8),
        "-o",
        s(&decoded_path),
        "--dtype",
        "f32",
        "-q",
    ]);
    let decoded = reference_map(&decoded_path);
    let (target, ft1, ft2) = (
        reference_map(&fam.target),
        reference_map(&fam.fts[0]),
        reference_map(&fam.fts[1]),
    );
    let mut by_block: BTreeMap<String, Products> = BTreeMap::new();
    for (key, t) in &target {
        if !key.starts_with("model.diffusion_model.") {
            continue;
        }
        let block = reference_dit_block(key, true).unwrap();
        let tv = t.values.as_ref().unwrap();
        let e: Vec<f64> = if q8_names.contains(key) {
            let rt = q8_0_round_trip(&t.f32_values());
            let dv = decoded[key].values.as_ref().unwrap();
            for (i, (a, b)) in rt.iter().zip(dv).enumerate() {
                assert_eq!(*a as f64, *b, "{key}[{i}]: Q8_0 as gguf-py computes it");
            }
            rt.iter().zip(tv).map(|(q, x)| *q as f64 - x).collect()
        } else {
            assert_eq!(
                tv,
                decoded[key].values.as_ref().unwrap(),
                "{key}: kept exactly"
            );
            vec![0.0; tv.len()]
        };
        let (a, m) = (
            ft1[key].values.as_ref().unwrap(),
            ft2[key].values.as_ref().unwrap(),
        );
        let p = by_block.entry(block).or_default();
        for i in 0..tv.len() {
            let d = m[i] - a[i];
            p.tt += tv[i] * tv[i];
            p.td += tv[i] * d;
            p.dd += d * d;
            p.te += tv[i] * e[i];
            p.de += d * e[i];
            p.ee += e[i] * e[i];
        }
    }
    let (mut moved, mut largest_shift) = (0, 0f64);
    for block in diffuser_blocks(&st) {
        let p = &by_block[&block];
        let shift = got[&block] - st[&block];
        if p.ee == 0.0 {
            assert!(
                shift.abs() <= 1e-9,
                "{block}: unquantized, yet the alpha moved by {shift}"
            );
            continue;
        }
        let dperp2 = p.dd - p.td * p.td / p.tt;
        let predicted = (p.de - p.td / p.tt * p.te) / dperp2;
        let bound = p.ee.sqrt() / dperp2.sqrt();
        assert!(
            shift.abs() <= bound,
            "{block}: moved {shift}, more than ‖e‖/‖D⊥‖ = {bound}"
        );
        // The alphas are written with 9 decimals; second-order terms are ~1e-4 of δ.
        assert!(
            (shift - predicted).abs() <= 1e-3 * predicted.abs() + 1e-8,
            "{block}: moved {shift}, first order predicts {predicted} (bound {bound})"
        );
        moved += usize::from(shift != 0.0);
        largest_shift = largest_shift.max(shift.abs());
    }
    // The case means something: quantization moved the alphas of the quantized blocks, by
    // far more than the fit's own precision (1e-7).
    assert!(moved >= 50, "only {moved} blocks moved");
    assert!(largest_shift > 1e-5, "largest shift {largest_shift}");
}

/// The lineage group of a Flux block (`D07` is `D`).
fn lineage_group(block: &str) -> String {
    match block.as_bytes() {
        [b'D' | b'S', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => block[..1].into(),
        _ => block.into(),
    }
}

/// `index add` takes GGUF files beside safetensors ones and names them without `.gguf`;
/// `lineage` explains a GGUF merge by its planted parents and weights from the index alone
/// (its F16 values are the merge's exactly, so the weights fall within the sketch's error
/// bars as for safetensors) and `--verify` clones it; and a Q8_0 copy of an indexed model is
/// found as that model, its weight off 1 by no more than its quantization error allows.
#[test]
fn test_gguf_index_and_lineage_find_the_sources() {
    let arch = arch("flux");
    let planted = [("IN", 0.25), ("D", 0.35), ("S", 0.65), ("OUT", 0.8)];
    let alpha: Vec<f64> = arch
        .merge_blocks()
        .iter()
        .map(|b| {
            let g = lineage_group(&b.to_string());
            planted.iter().find(|(p, _)| *p == g).map_or(0.0, |p| p.1)
        })
        .collect();
    let fam = family_with(&block_profile_of(arch, &alpha));
    let ix = fam.dir.path("ix.sqlite");
    let (base, ft1, ft2) = (
        fam.gguf(&fam.base, "base", None),
        fam.gguf(&fam.fts[0], "ft1", None),
        fam.gguf(&fam.fts[1], "ft2", None),
    );
    let added = run_ok(&[
        "index",
        "--index",
        s(&ix),
        "add",
        s(&base),
        s(&ft1),
        s(&ft2),
        s(&fam.fts[2]),
        "-q",
    ]);
    assert_eq!(added.matches("added").count(), 4, "{added}");
    let ls = run_json(&["index", "--index", s(&ix), "ls"]);
    let listed: BTreeMap<&str, &str> = ls["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["container"].as_str().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<&str, &str> = [
        ("base", "gguf"),
        ("ft1", "gguf"),
        ("ft2", "gguf"),
        ("ft3", "safetensors"),
    ]
    .into();
    assert_eq!(listed, want, "{ls}");

    // The merge, as an F16 GGUF: parents, weights and a clone, with --base by name.
    let target = fam.gguf(&fam.target, "merge", None);
    let v = run_json(&words(
        "lineage {} --index {} --base base --verify -q",
        &[s(&target), s(&ix)],
    ));
    assert_eq!(v["is_merge"], true, "{v}");
    assert_eq!(v["base"], "base");
    assert_eq!(lineage_parents(&v), ["ft1", "ft2"]);
    for (group, a) in planted {
        assert_lineage_weight(&v, group, "ft1", 1.0 - a);
        assert_lineage_weight(&v, group, "ft2", a);
    }
    assert!(
        v["verified"]["lowest"].as_f64().unwrap() >= 0.9999,
        "{}",
        v["verified"]
    );

    // A Q8_0 copy of ft2 is ft2: one parent, weight 1 within |e| / |τ⊥| per group, where e is
    // the copy's quantization error (gguf-py's Q8_0, written out above) and τ⊥ the part of
    // ft2's change from the base orthogonal to ft2 (the larger of the least-squares bound
    // |e|/|τ| and the cosine's).
    let copy = fam.gguf(&fam.fts[1], "ft2-q8", Some("Q8_0"));
    let v = run_json(&words(
        "lineage {} --index {} --base base -q",
        &[s(&copy), s(&ix)],
    ));
    assert_eq!(v["parents"], serde_json::json!(["ft2"]), "{v}");
    let info = ckpt_read::Checkpoint::open(&copy).unwrap();
    let q8: Vec<String> = info
        .gguf()
        .unwrap()
        .tensors
        .iter()
        .filter(|t| t.ggml_type == ckpt_read::gguf::GgmlType::Q8_0)
        .map(|t| format!("model.diffusion_model.{}", t.name))
        .collect();
    let (b, m) = (reference_map(&fam.base), reference_map(&fam.fts[1]));
    // Per group: (|e|², |τ|², <τ,m>, |m|²).
    let mut sums: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    for (key, t) in &m {
        if !key.starts_with("model.diffusion_model.") {
            continue;
        }
        let g = lineage_group(&reference_dit_block(key, true).unwrap());
        let mv = t.values.as_ref().unwrap();
        let bv = b[key].values.as_ref().unwrap();
        let rt = q8.contains(key).then(|| q8_0_round_trip(&t.f32_values()));
        let acc = sums.entry(g).or_default();
        for i in 0..mv.len() {
            let e = rt.as_ref().map_or(0.0, |r| r[i] as f64 - mv[i]);
            let tau = mv[i] - bv[i];
            acc[0] += e * e;
            acc[1] += tau * tau;
            acc[2] += tau * mv[i];
            acc[3] += mv[i] * mv[i];
        }
    }
    let mut quantized = 0;
    for group in ["IN", "D", "S", "OUT"] {
        let [ee, tt, tm, mm] = sums[group];
        let perp2 = tt - tm * tm / mm;
        let bound = ee.sqrt() / perp2.sqrt().min(tt.sqrt());
        quantized += usize::from(ee > 0.0);
        let g = find_row(&v["groups"], "group", &group);
        let w = g["weights"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w[0] == "ft2")
            .unwrap_or_else(|| panic!("{group}: no ft2 in {g}"));
        let (got, err) = (w[1].as_f64().unwrap(), w[2].as_f64().unwrap());
        assert!(
            (got - 1.0).abs() <= bound + err + 1e-6,
            "{group}: ft2 x {got} ± {err}, quantization allows {bound}"
        );
    }
    assert_eq!(quantized, 2, "D and S hold the Q8_0 tensors");

    // ft2.safetensors is named ft2 too: `index add` says which file already is.
    let added = run_ok(&["index", "--index", s(&ix), "add", s(&fam.fts[1]), "-q"]);
    let abs = std::path::absolute(&ft2).unwrap();
    assert!(
        added.contains(&format!("note: 'ft2' also names {}", abs.display())),
        "{added}"
    );
}
