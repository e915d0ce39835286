//! `ckpt-diff hash` against independent computations: explicit byte ranges hashed here, and
//! Python's hashlib / zlib / blake3 (tests/oracle/hashes.py).

use std::path::{Path, PathBuf};

use ckpt_ops::synth::Synthetic;
use ckpt_read::dtype::FloatFormat;
use sha2::Digest;

use crate::util::*;

fn sha(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Three files: a small one (under 2 MiB), a normal checkpoint, one with a 3 MB header.
fn files(d: &Dir) -> Vec<PathBuf> {
    let small = d.model(
        "small.safetensors",
        &layout(arch("sd1"), 64, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 1),
    );
    let normal = d.model(
        "normal.safetensors",
        &layout(arch("sd1"), 16, FloatFormat::BF16),
        &Synthetic::base(arch("sd1"), 2),
    );
    let big_header = d.path("big-header.safetensors");
    let long = "x".repeat(3 << 20);
    let t = RawTensor {
        name: "w".into(),
        dtype: "F32".into(),
        shape: vec![300_000],
        data: (0..1_200_000u32).map(|i| (i % 251) as u8).collect(),
    };
    write_raw(&big_header, &[t], &[("padding", &long)], 0);
    assert!(std::fs::metadata(&small).unwrap().len() < 2 << 20);
    vec![small, normal, big_header]
}

fn hashes_of(p: &Path) -> serde_json::Value {
    let j = run_json(&["hash", s(p)]);
    j["files"][0]["hashes"].clone()
}

#[test]
fn hashes_match_their_byte_ranges() {
    let d = Dir::new();
    for p in files(&d) {
        let data = std::fs::read(&p).unwrap();
        let h = hashes_of(&p);
        assert_eq!(h["sha256"], sha(&data));
        assert_eq!(h["autov2"], sha(&data)[..10]);
        let legacy = sha(&data[(1 << 20).min(data.len())..((1 << 20) + (1 << 16)).min(data.len())])
            [..8]
            .to_string();
        assert_eq!(h["a1111_legacy"], legacy);
        if data.len() < 2 << 20 {
            assert!(
                h["autov1"].is_null(),
                "Civitai does not define AutoV1 under 2 MiB"
            );
        } else {
            assert_eq!(h["autov1"], legacy);
        }
        let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
        assert_eq!(
            h["autov3"],
            sha(&data[8 + n..]),
            "AutoV3 hashes the data after the header"
        );
        assert_eq!(h["autov3_from"], 8 + n);
        assert_eq!(h["blake3"], blake3::hash(&data).to_hex().as_str());
        assert_eq!(h["crc32"], hex_le(crc32fast::hash(&data)));
    }
}

fn hex_le(v: u32) -> String {
    v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hashes_match_python_hashlib_zlib_blake3() {
    let python = std::env::var(ckpt_read::env::PYTHON.name).unwrap_or_else(|_| "python3".into());
    let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/hashes.py");
    let d = Dir::new();
    let fs = files(&d);
    let mut args = vec![oracle.to_str().unwrap().to_string()];
    args.extend(fs.iter().map(|p| s(p).to_string()));
    let out = match std::process::Command::new(&python).args(&args).output() {
        Ok(o) if o.status.success() => o,
        other => panic!(
            "the Python oracle ({python}) could not run: {other:?}; set CKPT_DIFF_PYTHON or install python3"
        ),
    };
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut blake3_checked = false;
    for (p, want) in fs.iter().zip(&lines) {
        let got = hashes_of(p);
        for k in [
            "bytes",
            "a1111_legacy",
            "autov1",
            "sha256",
            "autov2",
            "autov3",
            "autov3_from",
            "crc32",
        ] {
            assert_eq!(got[k], want[k], "{k} of {}", p.display());
        }
        if !want["blake3"].is_null() {
            assert_eq!(got["blake3"], want["blake3"]);
            blake3_checked = true;
        }
    }
    if !blake3_checked {
        // CI installs the blake3 module (.ci/run); say so when it is missing here.
        assert!(
            std::env::var(ckpt_read::env::REQUIRE_PY_BLAKE3.name).is_err(),
            "the Python blake3 module is required but missing"
        );
        crate::util::say_skipped(
            "hashes_match_python_hashlib_zlib_blake3: the BLAKE3 comparison (Python's blake3 module is not installed; .ci/run installs it)",
        );
    }
}

#[test]
fn civitai_quirk_for_huge_headers() {
    // A header of 16 MiB or more: Civitai hashes AutoV3 from offset 8.
    let d = Dir::new();
    let p = d.path("huge.safetensors");
    let pad = "y".repeat(17 << 20);
    write_raw(
        &p,
        &[RawTensor {
            name: "w".into(),
            dtype: "U8".into(),
            shape: vec![4],
            data: vec![1, 2, 3, 4],
        }],
        &[("pad", &pad)],
        0,
    );
    let data = std::fs::read(&p).unwrap();
    let h = hashes_of(&p);
    assert_eq!(h["autov3_from"], 8);
    assert_eq!(h["autov3"], sha(&data[8..]));
}

#[test]
fn pickles_are_hashed_not_loaded() {
    let d = Dir::new();
    let p = d.path("model.ckpt");
    let data: Vec<u8> = b"PK\x03\x04"
        .iter()
        .copied()
        .chain((0..3_000_000u32).map(|i| (i % 7) as u8))
        .collect();
    std::fs::write(&p, &data).unwrap();
    let h = hashes_of(&p);
    assert_eq!(h["sha256"], sha(&data));
}

#[test]
fn metadata_claims_are_checked() {
    let d = Dir::new();
    let src = d.model(
        "m.safetensors",
        &layout(arch("sd1"), 64, FloatFormat::F16),
        &Synthetic::base(arch("sd1"), 3),
    );
    let (tensors, _) = read_raw(&src);
    // Our own writer of the same tensors gives the data region; its AutoV3 is what to claim.
    let good = d.path("good.safetensors");
    write_raw(&good, &tensors, &[], 0);
    let v3 = hashes_of(&good)["autov3"].as_str().unwrap().to_string();
    let claimed = d.path("claimed.safetensors");
    let spec = format!("0x{v3}");
    write_raw(
        &claimed,
        &tensors,
        &[
            ("sshs_model_hash", &v3.to_uppercase()),
            ("modelspec.hash_sha256", &spec),
        ],
        0,
    );
    let (code, out, _) = run_code(&["hash", s(&claimed)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sshs_model_hash holds") && out.contains("modelspec.hash_sha256 holds"),
        "{out}"
    );
    let stale = d.path("stale.safetensors");
    write_raw(&stale, &tensors, &[("sshs_model_hash", &"0".repeat(64))], 0);
    let (code, out, _) = run_code(&["hash", s(&stale)]);
    assert_eq!(code, 1, "a claim that does not hold exits 1");
    assert!(out.contains("does NOT hold"), "{out}");
}

fn component_hashes(p: &Path) -> serde_json::Value {
    run_json(&["hash", s(p), "--components"])["files"][0]["components"].clone()
}

#[test]
fn component_hashes_ignore_names_and_order_and_fp16_form_ignores_precision() {
    let d = Dir::new();
    let a = d.model(
        "a.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::F32),
        &Synthetic::base(arch("sd1"), 4),
    );
    let (tensors, _) = read_raw(&a);
    // Twin 1: tensors in reverse order, text encoder under the old key names.
    let mut twin = tensors.clone();
    twin.reverse();
    for t in &mut twin {
        if let Some(rest) = t
            .name
            .strip_prefix("cond_stage_model.transformer.text_model.")
        {
            t.name = format!("cond_stage_model.transformer.{rest}");
        }
    }
    let b = d.path("b.safetensors");
    write_raw(&b, &twin, &[], 0);
    // Twin 2: every F32 rounded to F16 with `half` (correctly rounded).
    let half_twin: Vec<RawTensor> = tensors
        .iter()
        .map(|t| {
            if t.dtype != "F32" {
                return t.clone();
            }
            let data = t
                .data
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            RawTensor {
                dtype: "F16".into(),
                data,
                ..t.clone()
            }
        })
        .collect();
    let c = d.path("c.safetensors");
    write_raw(&c, &half_twin, &[], 0);
    let (ha, hb, hc) = (
        component_hashes(&a),
        component_hashes(&b),
        component_hashes(&c),
    );
    assert_eq!(
        ha["components"], hb["components"],
        "renaming and reordering keep every hash"
    );
    for (x, y) in ha["components"]
        .as_array()
        .unwrap()
        .iter()
        .zip(hc["components"].as_array().unwrap())
    {
        assert_eq!(
            x["fp16"], y["fp16"],
            "{}: the fp16 form ignores the precision",
            x["component"]
        );
        assert_ne!(
            x["exact"], y["exact"],
            "{}: the exact form does not",
            x["component"]
        );
    }
    // A changed weight changes its component's hash only.
    let mut changed = tensors.clone();
    let t = changed
        .iter_mut()
        .find(|t| t.name == "first_stage_model.decoder.conv_in.bias")
        .unwrap();
    t.data[0] ^= 1;
    let e = d.path("e.safetensors");
    write_raw(&e, &changed, &[], 0);
    let he = component_hashes(&e);
    for (x, y) in ha["components"]
        .as_array()
        .unwrap()
        .iter()
        .zip(he["components"].as_array().unwrap())
    {
        assert_eq!(
            x["exact"] == y["exact"],
            x["component"] != "vae",
            "{}",
            x["component"]
        );
    }
}

#[test]
fn toolkit_metric_matches_its_definition() {
    let d = Dir::new();
    let p = d.model(
        "m.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::BF16),
        &Synthetic::base(arch("sd1"), 6),
    );
    // The toolkit's rule, written out: sigmoid - 0.5 of fp16-rounded values; U-Net: all
    // of it; VAE: encoder./decoder. keys; CLIP: mlp. keys, not .23.
    let (mut u, mut v, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for t in read_reference(&p) {
        let Some(values) = &t.values else { continue };
        let sum: f64 = values
            .iter()
            .map(|&x| {
                let x = half::f16::from_f64(x).to_f64(); // bf16 -> f16 needs no double rounding care: exact in f32
                1.0 / (1.0 + (-x).exp()) - 0.5
            })
            .sum();
        if t.name.starts_with("model.diffusion_model.") {
            u += sum;
        } else if t.name.starts_with("first_stage_model.")
            && (t.name.contains("encoder.") || t.name.contains("decoder."))
        {
            v += sum;
        } else if t.name.starts_with("cond_stage_model.")
            && t.name.contains("mlp.")
            && !t.name.contains(".23.")
        {
            c += sum;
        }
    }
    let digits = |sum: f64, base: f64, scale: f64| {
        let mut n = ((sum / base - 1.0).abs() * scale).floor();
        while n >= 10000.0 {
            n -= 5000.0;
        }
        format!("{:04}", n as u32)
    };
    let want = format!(
        "{}/{}/{}",
        digits(u, -6131.5400, 1e4),
        digits(v, 17870.7051, 1e4),
        digits(c, -2097.8596, 1e6)
    );
    let got = component_hashes(&p)["metric"]["display"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(got, want);
    // SDXL: the toolkit covers neither its U-Net nor its CLIPs.
    let xl = d.model(
        "xl.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 6),
    );
    let m = component_hashes(&xl)["metric"]["display"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(m.starts_with("----/") && m.ends_with("/----"), "{m}");
}
