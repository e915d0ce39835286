//! PyTorch checkpoints: read without executing, checked against what `torch.load` gave
//! (fixtures/torch/goldens.json, made by fixtures/torch/make_fixtures.py with real PyTorch).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::util::{Dir, read_raw, run_code, run_json, run_ok, s, words};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/torch")
        .join(name)
}

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn safetensors_dtype(torch: &str) -> &'static str {
    match torch {
        "float32" => "F32",
        "float16" => "F16",
        "bfloat16" => "BF16",
        "float64" => "F64",
        "int64" => "I64",
        "int32" => "I32",
        "uint8" => "U8",
        "bool" => "BOOL",
        other => panic!("dtype {other} not in the fixtures"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every tensor of every fixture, converted by the binary and read back by the
/// `safetensors` crate, has torch.load's dtype, shape and bytes; scalars become metadata.
#[test]
fn test_every_tensor_equals_torch_load() {
    let g = goldens();
    let dir = Dir::new();
    let files = g["files"].as_object().unwrap();
    assert_eq!(files.len(), 11);
    for (name, want) in files {
        let out = dir.path(&format!("{name}.safetensors"));
        run_ok(&["convert", s(&fixture(name)), "-o", s(&out), "-q"]);
        let (tensors, metadata) = read_raw(&out);
        let want_t = want["tensors"].as_object().unwrap();
        assert_eq!(tensors.len(), want_t.len(), "{name}");
        for t in &tensors {
            let w = &want_t[&t.name];
            assert_eq!(
                t.dtype,
                safetensors_dtype(w["dtype"].as_str().unwrap()),
                "{name} {}",
                t.name
            );
            let shape: Vec<usize> = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{name} {}", t.name);
            assert_eq!(
                hex(&Sha256::digest(&t.data)),
                w["sha256"].as_str().unwrap(),
                "{name} {}",
                t.name
            );
        }
        for (k, v) in want["scalars"].as_object().unwrap() {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let key = format!("ckpt_diff.{k}");
            assert!(
                metadata.contains(&(key.clone(), v.clone())),
                "{name}: {key}={v} not in {metadata:?}"
            );
        }
    }
    // The hard cases are really in the fixtures (so the checks above exercised them).
    let f32 = files["sd1-zip-f32.ckpt"]["tensors"].as_object().unwrap();
    assert!(f32.values().any(|t| t["contiguous"] == false));
    assert!(f32.values().any(|t| t["dtype"] == "bool"));
    let inspect = run_json(&["inspect", s(&fixture("sd1-zip-f32.ckpt"))]);
    assert_eq!(inspect["pickle"]["copied_tensors"], 1);
    assert_eq!(inspect["pickle"]["state_dict_at"], "state_dict");
    let big = run_json(&["inspect", s(&fixture("sd1-zip-f16-big.ckpt"))]);
    assert_eq!(big["pickle"]["big_endian"], true);
}

/// Equal JSON, but for float sums that differ in the last bits (a pass adds the tensors in
/// file order, and the two files order them differently) and the order of key lists.
fn same(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "{at}: {x} vs {y}"
            );
        }
        (V::Array(x), V::Array(y)) if x.iter().all(|v| v.is_string()) => {
            let mut x: Vec<String> = x.iter().map(|v| v.to_string()).collect();
            let mut y: Vec<String> = y.iter().map(|v| v.to_string()).collect();
            x.sort();
            y.sort();
            assert_eq!(x, y, "{at}");
        }
        (V::Array(x), V::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                same(x, y, &format!("{at}[{i}]"));
            }
        }
        (V::Object(x), V::Object(y)) => {
            let kx: Vec<&String> = x.keys().collect();
            let ky: Vec<&String> = y.keys().collect();
            assert_eq!(kx, ky, "{at}");
            for (k, v) in x {
                same(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// The same numbers from every command on a `.ckpt` and on its converted `.safetensors`.
#[test]
fn test_commands_agree_on_ckpt_and_converted() {
    let dir = Dir::new();
    let ckpt = fixture("sd1-legacy-f32.ckpt");
    // The same stem, so that recipes name both inputs alike.
    let st = dir.path("sd1-legacy-f32.safetensors");
    run_ok(&["convert", s(&ckpt), "-o", s(&st), "-q"]);
    // Another model to compare with: the bf16 fixture (same seed, other rounding) as a
    // zip ckpt, and a generated one of another seed.
    let other = dir.path("other.safetensors");
    run_ok(&words(
        "synth model -q --scale 64 --dtype f32 --seed 9 --ema {}",
        &[s(&other)],
    ));
    let strip = |mut v: serde_json::Value| {
        // Paths and names differ by design.
        fn walk(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    for k in [
                        "path",
                        "name",
                        "a",
                        "b",
                        "file",
                        "models",
                        "container",
                        "pickle",
                        "header_bytes",
                        "file_bytes",
                    ] {
                        m.remove(k);
                    }
                    for (_, x) in m.iter_mut() {
                        walk(x);
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
                _ => {}
            }
        }
        walk(&mut v);
        v
    };
    for args in [
        vec!["sim", "{}", s(&other)],
        vec!["sim", "{}", s(&other), "--metric", "asim"],
        vec!["l2", "--base", s(&other), "{}"],
    ] {
        let with = |p: &Path| -> Vec<String> {
            args.iter()
                .map(|a| {
                    if *a == "{}" {
                        s(p).to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        };
        let a = with(&ckpt);
        let b = with(&st);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        same(
            &strip(run_json(&a)),
            &strip(run_json(&b)),
            &format!("{args:?}"),
        );
    }
    let comps =
        |p: &Path| run_json(&["hash", "--components", s(p)])["files"][0]["components"].clone();
    assert_eq!(comps(&ckpt), comps(&st));
    let findings = |p: &Path| {
        let (_, out, _) = run_code(&["validate", s(p), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut f: Vec<serde_json::Value> = v["files"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["code"].as_str().unwrap().starts_with("pickle"))
            .cloned()
            .collect();
        f.sort_by_key(|x| x.to_string());
        f
    };
    same(
        &serde_json::Value::Array(findings(&ckpt)),
        &serde_json::Value::Array(findings(&st)),
        "validate",
    );
    // A merge with the ckpt as input writes the same tensors as with the safetensors.
    let m1 = dir.path("m1.safetensors");
    let m2 = dir.path("m2.safetensors");
    run_ok(&words(
        "merge ws {} {} --alpha 0.3 -o {} -q",
        &[s(&ckpt), s(&other), s(&m1)],
    ));
    run_ok(&words(
        "merge ws {} {} --alpha 0.3 -o {} -q",
        &[s(&st), s(&other), s(&m2)],
    ));
    let (t1, _) = read_raw(&m1);
    let (t2, _) = read_raw(&m2);
    assert_eq!(t1.len(), t2.len());
    for (a, b) in t1.iter().zip(&t2) {
        assert_eq!((&a.name, &a.shape, &a.data), (&b.name, &b.shape, &b.data));
    }
    // fix reads a ckpt as it reads the safetensors.
    let f1 = dir.path("f1.safetensors");
    let f2 = dir.path("f2.safetensors");
    for (input, out) in [(&ckpt, &f1), (&st, &f2)] {
        let (code, _, err) = run_code(&["fix", s(input), "-o", s(out), "--drop-ema", "-q"]);
        assert!(code <= 1, "{err}");
    }
    let (t1, _) = read_raw(&f1);
    let (t2, _) = read_raw(&f2);
    assert_eq!(t1.len(), t2.len());
    for (a, b) in t1.iter().zip(&t2) {
        assert_eq!((&a.name, &a.shape, &a.data), (&b.name, &b.shape, &b.data));
    }
    // fit takes a ckpt as target and as source.
    let fit = |target: &Path| {
        let v = run_json(&words(
            "fit --target {} --base {} --sources {} -q",
            &[s(&m1), s(&other), s(target)],
        ));
        strip(v["steps"].clone())
    };
    same(&fit(&ckpt), &fit(&st), "fit");
}

/// The malicious pickles never run; every command names the global and its byte offset.
#[test]
fn test_malicious_pickles_never_run() {
    let g = goldens();
    let marker = std::env::temp_dir().join("ckpt-diff-pwned");
    let _ = std::fs::remove_file(&marker);
    let dir = Dir::new();
    let evil = g["evil"].as_object().unwrap();
    assert_eq!(evil.len(), 8);
    for (name, want) in evil {
        let path = fixture(name);
        let global = want["global"].as_str().unwrap();
        let place = format!("{global} (byte {}", want["offset"]);
        let (code, out, err) = run_code(&["validate", s(&path)]);
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(
            out.contains("DANGEROUS") && out.contains(&place),
            "{name}: {out}"
        );
        // Elsewhere a loud warning, and the tensors are still readable.
        let (code, _, err) = run_code(&["inspect", s(&path)]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            err.contains("WARNING") && err.contains(&place),
            "{name}: {err}"
        );
        let out = dir.path(&format!("{name}.safetensors"));
        let (code, _, err) = run_code(&["convert", s(&path), "-o", s(&out), "-q"]);
        assert_eq!(code, 0, "{name}: {err}");
        let v = run_json(&["inspect", s(&path)]);
        let listed = v["pickle"]["globals"].as_array().unwrap().iter().any(|x| {
            format!(
                "{}.{}",
                x["module"].as_str().unwrap(),
                x["name"].as_str().unwrap()
            ) == global
                && x["verdict"] == "dangerous"
                && x["offset"] == want["offset"]
        });
        assert!(listed, "{name}: {v}");
    }
    assert!(
        !marker.exists(),
        "a payload ran: {} exists",
        marker.display()
    );
}

/// Damaged torch files are errors that name the file and say what is wrong, never panics.
#[test]
fn test_damaged_torch_files_are_clear_errors() {
    let dir = Dir::new();
    for name in ["sd1-zip-f16.ckpt", "sd1-legacy-f16.ckpt"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for cut in [100, bytes.len() / 2, bytes.len() - 30] {
            let p = dir.path(&format!("cut-{cut}-{name}"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let (code, _, err) = run_code(&["inspect", s(&p)]);
            assert_eq!(code, 2, "{name} cut at {cut}: {err}");
            assert!(err.contains(s(&p)) && !err.contains("panicked"), "{err}");
        }
    }
}

/// A real checkpoint's pickle is far below the interpreter's limits: a few values per
/// tensor, so even a model of 10^5 tensors stays three orders of magnitude under them.
#[test]
fn test_real_pickles_are_far_below_the_limits() {
    use ckpt_read::pickle::{Limits, parse};
    let bytes = std::fs::read(fixture("sd1-zip-f32.ckpt")).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("sd1-zip-f32/data.pkl").unwrap(), &mut pkl)
        .unwrap();
    let p = parse(&pkl, 0, Limits::default()).unwrap();
    let tensors = goldens()["files"]["sd1-zip-f32.ckpt"]["tensors"]
        .as_object()
        .unwrap()
        .len();
    let per_tensor = p.nodes.len() as f64 / tensors as f64;
    eprintln!(
        "{} values for {tensors} tensors ({per_tensor:.1} each)",
        p.nodes.len()
    );
    assert!(per_tensor < 24.0, "{per_tensor} values per tensor");
    assert!(24 * 100_000 < Limits::default().max_nodes);
}
