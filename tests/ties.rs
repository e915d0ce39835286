//! TIES with sd-mecha's options (`ties(..., vote=, combine=, drop=, like=)`, `tgmd`):
//! `like=sd-mecha` against sd-mecha 1.1.8 itself (live where it is installed, its goldens in
//! fixtures/ties-mecha otherwise), ckpt-diff's own conventions and the dropout against
//! per-element references written out here.

use std::path::PathBuf;

use ckpt_ops::merge::methods::dare::dare_stream;

use crate::merge::{check, family, filter, inputs, merged, sha256_of, top_k};
use crate::util::*;

const COMBINES: [&str; 3] = ["mean", "stock", "median"];
const VOTES: [&str; 2] = ["count", "magnitude"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/ties-mecha")
}

/// The inputs tests/oracle/ties_mecha_goldens.sh builds: an SD1 base at 1/16 width and four
/// models with dense random deltas of 0.3 spread (so signs disagree everywhere).
fn mecha_inputs(dir: &Dir) -> Vec<PathBuf> {
    let mut paths = vec![dir.path("base.safetensors")];
    run_ok(&words(
        "synth model --arch sd1 --scale 16 --seed 1 {} -q",
        &[s(&paths[0])],
    ));
    for i in 1..=4 {
        let p = dir.path(&format!("m{i}.safetensors"));
        let delta = format!("{}:0.3", 10 + i);
        run_ok(&words(
            "synth model --arch sd1 --scale 16 --seed 1 --delta {} {} -q",
            &[&delta, s(&p)],
        ));
        paths.push(p);
    }
    paths
}

/// A Python with sd-mecha: $CKPT_DIFF_MECHA_PYTHON (`none`: use the goldens), else the
/// bench environment's.
fn mecha_python() -> Option<String> {
    if std::env::var(ckpt_read::env::MECHA_PYTHON.name).is_ok_and(|v| v == "none") {
        return None;
    }
    let candidates = [
        std::env::var(ckpt_read::env::MECHA_PYTHON.name).ok(),
        Some(format!(
            "{}/target/bench-venv/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )),
    ];
    candidates.into_iter().flatten().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import sd_mecha, torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Equal to fp16 rounding: within one fp16 step of the larger value (the smallest normal
/// step below 2^-14).
fn assert_fp16_equal(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let step = g.abs().max(w.abs()).max(6.1e-5) * 2f64.powi(-10);
        assert!(
            (g - w).abs() <= step * 1.001,
            "{what}[{i}]: ckpt-diff {g} vs sd-mecha {w}"
        );
    }
}

#[test]
fn ties_like_sd_mecha_equals_sd_mecha() {
    let dir = Dir::new();
    let paths = mecha_inputs(&dir);
    let python = mecha_python();
    if python.is_none() {
        // The goldens were made from these very inputs.
        let recorded = std::fs::read_to_string(fixtures().join("inputs.sha256")).unwrap();
        for p in &paths {
            let name = p.file_name().unwrap().to_str().unwrap();
            let line = format!("{}  {name}", sha256_of(p));
            assert!(
                recorded.lines().any(|l| l == line),
                "{name} is not the input the goldens were made from; regenerate them with \
                 tests/oracle/ties_mecha_goldens.sh"
            );
        }
        say_skipped("live sd-mecha run (no Python with sd-mecha): compared with its goldens");
    }
    let mut compared = 0;
    for combine in COMBINES {
        for vote in VOTES {
            let mut text = String::new();
            for (name, p) in ["B", "M1", "M2", "M3", "M4"].iter().zip(&paths) {
                text.push_str(&format!("{name} = \"{}\"\n", s(p)));
            }
            text.push_str(&format!(
                "OUT = ties(B, M1, M2, M3, M4, k=0.3, vote={vote}, combine={combine}, like=sd-mecha, ftol=1e-20)\n"
            ));
            let recipe = dir.path("t.recipe");
            std::fs::write(&recipe, text).unwrap();
            let ours = dir.path(&format!("ours-{combine}-{vote}.safetensors"));
            run_ok(&words(
                "merge {} -o {} --no-input-hashes -q",
                &[s(&recipe), s(&ours)],
            ));
            let theirs = match &python {
                Some(py) => {
                    let out = dir.path(&format!("mecha-{combine}-{vote}.safetensors"));
                    let script =
                        format!("{}/tests/oracle/ties_mecha.py", env!("CARGO_MANIFEST_DIR"));
                    let mut args: Vec<String> = vec![script, s(&out).into()];
                    args.extend(paths.iter().map(|p| s(p).to_string()));
                    args.extend(
                        ["--k", "0.3", "--vote", vote, "--combine", combine]
                            .iter()
                            .map(|a| a.to_string()),
                    );
                    let st = std::process::Command::new(py).args(&args).status().unwrap();
                    assert!(st.success(), "sd-mecha's run failed");
                    out
                }
                None => fixtures().join(format!("{combine}-{vote}.safetensors")),
            };
            let ours = reference_map(&ours);
            let base = reference_map(&paths[0]);
            let mut changed = 0usize;
            for t in read_reference(&theirs) {
                let Some(want) = &t.values else { continue };
                let got = ours[&t.name].values.as_ref().unwrap();
                assert_fp16_equal(&format!("{combine}/{vote} {}", t.name), got, want);
                let b = base[&t.name].values.as_ref().unwrap();
                changed += want.iter().zip(b).filter(|(w, b)| w != b).count();
                compared += 1;
            }
            // The merge moved most weights: a run that copied the base would fail here.
            assert!(
                changed > 100,
                "{combine}/{vote}: sd-mecha changed only {changed}"
            );
        }
    }
    assert!(compared >= 6 * 9, "only {compared} tensors compared");
}

#[test]
fn ties_stock_and_count_vote_follow_their_definitions() {
    let fam = family(arch("sd1"));
    let w = [1.0, 0.5, 2.0];
    let got = merged(
        &fam,
        "OUT = ties(B, F1, F2, F3, k=0.4, vote=count, combine=stock, lambda=0.8, weights=(1, 0.5, 2))\n",
        &[],
    );
    check(&fam, &got, |_, x| {
        let g = filter(&top_k(x, 0.4), &w, true);
        // Model Stock's t from every pair's cosine of the filtered deltas, per tensor.
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut cos = 0.0;
        for i in 0..3 {
            for j in i + 1..3 {
                let d = (dot(&g[i], &g[i]) * dot(&g[j], &g[j])).sqrt();
                cos += if d == 0.0 { 0.0 } else { dot(&g[i], &g[j]) / d };
            }
        }
        cos /= 3.0;
        let t = 3.0 * cos / (1.0 + 2.0 * cos);
        (0..x[0].len())
            .map(|e| {
                let num: f64 = g.iter().zip(&w).map(|(d, w)| w * d[e]).sum();
                let den: f64 = g
                    .iter()
                    .zip(&w)
                    .filter(|(d, _)| d[e] != 0.0)
                    .map(|(_, w)| w)
                    .sum();
                x[0][e] + 0.8 * t * if den == 0.0 { 0.0 } else { num / den }
            })
            .collect()
    });
}

#[test]
fn ties_median_is_the_weiszfeld_median_of_the_filtered_deltas() {
    let fam = family(arch("sd1"));
    let w = [1.0, 2.0, 1.0];
    let got = merged(
        &fam,
        "OUT = ties(B, F1, F2, F3, k=0.5, combine=median, weights=(1, 2, 1), maxiter=200, ftol=1e-15)\n",
        &[],
    );
    check(&fam, &got, |_, x| {
        let g = filter(&top_k(x, 0.5), &w, false);
        let n = x[0].len();
        let wsum: f64 = w.iter().sum();
        let mut z: Vec<f64> = (0..n)
            .map(|e| g.iter().zip(&w).map(|(d, w)| w * d[e]).sum::<f64>() / wsum)
            .collect();
        for _ in 0..200 {
            let c: Vec<f64> = g
                .iter()
                .zip(&w)
                .map(|(d, w)| {
                    let dist = (0..n).map(|e| (d[e] - z[e]).powi(2)).sum::<f64>().sqrt();
                    w / dist.max(1e-6)
                })
                .collect();
            let cs: f64 = c.iter().sum();
            z = (0..n)
                .map(|e| g.iter().zip(&c).map(|(d, c)| c / cs * d[e]).sum())
                .collect();
        }
        (0..n).map(|e| x[0][e] + z[e]).collect()
    });
}

#[test]
fn ties_dropout_matches_its_definition() {
    let fam = family(arch("sd1"));
    let (p, seed) = (0.6, 9u64);
    let got = merged(
        &fam,
        &format!("OUT = ties(B, F1, F2, F3, drop={p}, seed={seed}, k=0.5)\n"),
        &[],
    );
    check(&fam, &got, |key, x| {
        // DARE first (the keyed stream of `dare`), then TIES on the survivors, ÷ (1−p).
        let dropped: Vec<Vec<f64>> = (0..3)
            .map(|j| {
                let stream = dare_stream(seed, key, j);
                (0..x[0].len())
                    .map(|e| {
                        if stream.uniform(e as u64) < 1.0 - p {
                            x[j + 1][e]
                        } else {
                            x[0][e]
                        }
                    })
                    .collect()
            })
            .collect();
        let views: Vec<&[f64]> = std::iter::once(x[0])
            .chain(dropped.iter().map(|v| v.as_slice()))
            .collect();
        let g = filter(&top_k(&views, 0.5), &[1.0; 3], false);
        (0..x[0].len())
            .map(|e| {
                let kept: Vec<f64> = g.iter().map(|d| d[e]).filter(|v| *v != 0.0).collect();
                let mean = if kept.is_empty() {
                    0.0
                } else {
                    kept.iter().sum::<f64>() / kept.len() as f64
                };
                x[0][e] + mean / (1.0 - p)
            })
            .collect()
    });
}

/// TGMD's drop without rescale, one model: every element is the base or the model itself,
/// the kept share is 1 − p within binomial bounds per large tensor, and with DELLA the
/// share kept among the larger half of magnitudes moves by ε/4 against the smaller half
/// (the mean shift of each half: ±(1/4)·ε).
#[test]
fn tgmd_drop_keeps_its_share_and_della_shifts_it_by_rank() {
    let fam = family(arch("sd1"));
    let ins = inputs(&fam);
    let kept_by_half = |recipe: &str| -> (f64, f64, usize) {
        let got = merged(&fam, recipe, &[]);
        let (mut hi, mut lo, mut n_hi, mut n_lo) = (0usize, 0usize, 0usize, 0usize);
        for (key, t) in &got {
            let Some(v) = &t.values else { continue };
            let (b, m) = (
                ins[0][key].values.as_ref().unwrap(),
                ins[1][key].values.as_ref().unwrap(),
            );
            // fp16 model values in an f32 output: exact, so equality is exact.
            let mut mags: Vec<f64> = b.iter().zip(m).map(|(b, m)| (m - b).abs()).collect();
            if mags.iter().filter(|d| **d != 0.0).count() < 4096 {
                continue;
            }
            mags.sort_by(f64::total_cmp);
            let median = mags[mags.len() / 2];
            for e in 0..v.len() {
                let d = (m[e] - b[e]).abs();
                if d == 0.0 {
                    continue;
                }
                let kept = if v[e] == m[e] {
                    true
                } else {
                    assert_eq!(v[e], b[e], "{key}[{e}] is neither the base nor the model");
                    false
                };
                if d > median {
                    n_hi += 1;
                    hi += kept as usize;
                } else {
                    n_lo += 1;
                    lo += kept as usize;
                }
            }
        }
        (
            hi as f64 / n_hi as f64,
            lo as f64 / n_lo as f64,
            n_hi + n_lo,
        )
    };
    // One model: the median of one point is the point, so TGMD is the dropped delta.
    let (hi, lo, n) = kept_by_half("OUT = tgmd(B, F1, drop=0.3, seed=5)\n");
    let sigma = (0.7 * 0.3 / (n as f64 / 2.0)).sqrt();
    assert!(n > 100_000, "only {n} elements");
    for share in [hi, lo] {
        assert!(
            (share - 0.7).abs() < 5.0 * sigma,
            "kept {share}, want 0.7 ± {}",
            5.0 * sigma
        );
    }
    let (hi, lo, _) = kept_by_half("OUT = tgmd(B, F1, drop=0.3, della_eps=0.4, seed=5)\n");
    assert!(
        (hi - (0.7 + 0.1)).abs() < 5.0 * sigma,
        "larger half kept {hi}, want 0.8"
    );
    assert!(
        (lo - (0.7 - 0.1)).abs() < 5.0 * sigma,
        "smaller half kept {lo}, want 0.6"
    );
}

#[test]
fn ties_options_are_checked_before_reading() {
    let fam = family(arch("sd1"));
    let text = |steps: &str| {
        format!(
            "B = \"{}\"\nF1 = \"{}\"\n{steps}",
            s(&fam.base),
            s(&fam.fts[0])
        )
    };
    for (steps, want) in [
        (
            "OUT = ties(B, F1, vote=loudest)\n",
            "`vote` is one of: magnitude, count",
        ),
        (
            "OUT = ties(B, F1, combine=avg)\n",
            "`combine` is one of: mean, stock, median",
        ),
        ("OUT = ties(B, F1, della_eps=0.1)\n", "give `drop` too"),
        (
            "OUT = tgmd(B, F1, drop=1)\n",
            "`drop` (the drop probability) must be in [0, 1)",
        ),
    ] {
        let recipe = fam.dir.path("bad.recipe");
        std::fs::write(&recipe, text(steps)).unwrap();
        let out = fam.dir.path("bad.safetensors");
        let (code, _, err) = run_code(&["merge", s(&recipe), "-o", s(&out), "-q"]);
        assert_ne!(code, 0, "{steps}");
        assert!(err.contains(want), "{steps}: {err}");
        assert!(!out.exists());
    }
}
