//! `sim --metric asim` and the torch-compatible generator, against golden values made with
//! a real PyTorch install by `fixtures/asim/make_goldens.py`.

use ckpt_core::rng::torch::{MathPath, TorchGenerator};
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/asim")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

fn check_randn(capability: &str, path: MathPath) {
    let table = fixture("randn.json");
    let draws = table[capability]["draws"].as_array().unwrap();
    assert!(draws.len() >= 30);
    for d in draws {
        let (seed, n) = (
            d["seed"].as_u64().unwrap(),
            d["n"].as_u64().unwrap() as usize,
        );
        let x = TorchGenerator::manual_seed(seed, path).randn(n).unwrap();
        let bits: Vec<String> = x.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
        let want = |k: &str| -> Vec<String> {
            d[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let first = want("first");
        assert_eq!(
            bits[..first.len()],
            first[..],
            "seed {seed}, n {n}: first values"
        );
        let last = want("last");
        assert_eq!(
            bits[n - last.len()..],
            last[..],
            "seed {seed}, n {n}: last values"
        );
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sha = ckpt_ops::hash::hex(&Sha256::digest(&bytes));
        assert_eq!(
            sha,
            d["sha256"].as_str().unwrap(),
            "seed {seed}, n {n}: every value"
        );
    }
}

#[test]
fn randn_equals_pytorch_avx2_path() {
    check_randn("avx2", MathPath::Avx2);
}

#[test]
fn randn_equals_pytorch_scalar_path() {
    check_randn("default", MathPath::Scalar);
}

/// Per golden pair: regenerates the two files (`synth model` with the recorded arguments)
/// and runs every recorded selection through `sim --metric asim` in both precisions.
fn check_asim_goldens(only: &str) {
    // `only`: one pair id.
    let goldens = fixture("asim.json");
    let keys = goldens["keys"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut blocks_seen = 0;
    let mut outside_plain_tolerance = Vec::new();
    for pair in goldens["pairs"].as_array().unwrap() {
        let id = pair["id"].as_str().unwrap();
        if id != only {
            continue;
        }
        let mut paths = Vec::new();
        for tag in ["a", "b"] {
            let p = dir.path().join(format!("{id}-{tag}.safetensors"));
            let mut args: Vec<String> = vec!["synth".into(), "model".into()];
            args.push(p.to_str().unwrap().into());
            args.extend(["--keys".into(), keys.into(), "-q".into()]);
            args.extend(
                pair[format!("synth_{tag}")]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string()),
            );
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::util::run_ok(&a);
            paths.push(p);
        }
        for result in pair["results"].as_array().unwrap() {
            let like = result["like"].as_str().unwrap();
            let blocks = result["blocks"].as_str().unwrap();
            let seed = result["seed"].as_u64().unwrap().to_string();
            for precision in ["f32", "f64"] {
                let v = crate::util::run_json(&crate::util::words(
                    "sim --metric asim {} {} --like {} --blocks {} --seed {} --precision {}",
                    &[
                        paths[0].to_str().unwrap(),
                        paths[1].to_str().unwrap(),
                        like,
                        blocks,
                        &seed,
                        precision,
                    ],
                ));
                let ours = v["rows"].as_array().unwrap();
                let want = result["rows"].as_array().unwrap();
                assert_eq!(ours.len(), want.len(), "{id} {like} {blocks}");
                for (o, w) in ours.iter().zip(want) {
                    let name = w["block"].as_str().unwrap().replace("MID00", "M00");
                    assert_eq!(o["block"].as_str().unwrap(), name, "{id} {like} {blocks}");
                    assert_eq!(o["channels"], w["channels"]);
                    // Percentage points.
                    let got = 100.0 * o["similarity"].as_f64().unwrap();
                    let torch32 = 100.0 * w["similarity"].as_f64().unwrap();
                    let torch64 = 100.0 * w["similarity_f64"].as_f64().unwrap();
                    let what = format!("{id} {like} {blocks} seed {seed} {name} ({precision})");
                    if precision == "f64" {
                        // The same computation exactly: the draws, the skipped draws, the
                        // quirks.
                        assert!((got - torch64).abs() <= 1e-6, "{what}: {got} vs {torch64}");
                    } else {
                        // Float32 against float32: within 1e-4 points, or within PyTorch's
                        // own float32 error on this block (its distance to float64).
                        let own = (torch32 - torch64).abs();
                        assert!(
                            (got - torch32).abs() <= 1e-4 + own,
                            "{what}: {got} vs {torch32} (PyTorch f32 vs f64: {own:.1e})"
                        );
                        if (got - torch32).abs() > 1e-4 {
                            outside_plain_tolerance.push(what);
                        }
                        blocks_seen += 1;
                    }
                }
            }
        }
    }
    assert!(blocks_seen > 0, "no golden pair '{only}'");
    eprintln!(
        "{only}: {blocks_seen} blocks; beyond 1e-4 points of PyTorch f32: {outside_plain_tolerance:?}"
    );
    // The wider tolerance is the exception: blocks whose attention logits nearly tie.
    assert!(
        outside_plain_tolerance.len() * 10 <= blocks_seen,
        "{outside_plain_tolerance:?} of {blocks_seen}"
    );
}

#[test]
fn asim_equals_pytorch_sd1_full_size() {
    check_asim_goldens("sd1-f16-full");
}

#[test]
fn asim_equals_pytorch_sd1_selections_and_supermerger() {
    check_asim_goldens("sd1-f16");
}

#[test]
fn asim_equals_pytorch_unrelated_models_and_sd2() {
    check_asim_goldens("sd1-bf16-far");
    check_asim_goldens("sd2-f32");
}

#[test]
fn asim_equals_pytorch_sdxl() {
    check_asim_goldens("sdxl-f16");
}

#[test]
fn asim_explains_what_it_cannot_score() {
    let dir = tempfile::tempdir().unwrap();
    let te = dir.path().join("te.safetensors");
    let sd1 = dir.path().join("sd1.safetensors");
    let xl = dir.path().join("xl.safetensors");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    crate::util::run_ok(&crate::util::words(
        "synth model {} --scale 8 --components te1 -q",
        &[&s(&te)],
    ));
    crate::util::run_ok(&["synth", "model", &s(&sd1), "--scale", "8", "-q"]);
    crate::util::run_ok(&crate::util::words(
        "synth model {} --arch sdxl --scale 16 -q",
        &[&s(&xl)],
    ));
    let (code, _, err) = crate::util::run_code(&["sim", "--metric", "asim", &s(&sd1), &s(&te)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("te.safetensors") && err.contains("attn1"),
        "{err}"
    );
    let (code, _, err) = crate::util::run_code(&["sim", "--metric", "asim", &s(&sd1), &s(&xl)]);
    assert_eq!(code, 2);
    assert!(err.contains("different U-Nets"), "{err}");
    let (code, _, err) = crate::util::run_code(&crate::util::words(
        "sim --metric asim {} {} --blocks IN03",
        &[&s(&sd1), &s(&sd1)],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("no transformer"), "{err}");
    // The options of ASimilarity want --metric (clap says so) and its value asim.
    let (code, _, err) = crate::util::run_code(&["sim", &s(&sd1), &s(&sd1), "--seed", "3"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("required") && err.contains("--metric"),
        "{err}"
    );
    let (code, _, err) = crate::util::run_code(&crate::util::words(
        "sim --metric cosine {} {} --seed 3",
        &[&s(&sd1), &s(&sd1)],
    ));
    assert_eq!(code, 2);
    assert!(err.contains("--metric asim"), "{err}");
    // A model against itself: 100% in every block, whatever the draws.
    let v = crate::util::run_json(&["sim", "--metric", "asim", &s(&sd1), &s(&sd1)]);
    for r in v["rows"].as_array().unwrap() {
        assert!(
            (r["similarity"].as_f64().unwrap() - 1.0).abs() < 1e-6,
            "{r}"
        );
    }
}
