//! GGUF output (issue #27 part 3): `convert --quant` and `merge --quant` write what city96's
//! ComfyUI-GGUF tools write, checked against gguf-py 0.19.0 (`fixtures/gguf-write/check.py`),
//! live where the golden environment is (`target/golden-venv`), else against its committed
//! digests (`fixtures/gguf-write/goldens.json`, made by `make_goldens.sh` from the same
//! generated inputs):
//!
//! * gguf-py's reading of every written file (types, shapes after the reshape, dequantized
//!   values) equals ckpt-diff's own reading of it, tensor by tensor;
//! * for Q8_0 and the legacy mixes, the file's bytes equal gguf-py's `quantize` of the merge's
//!   values written as f32 safetensors, byte for byte;
//! * the type of every tensor for Q4_K_M and Q3_K_M on Flux and SDXL equals a table written
//!   here from city96's rules (`expected_types`), independently of the library's;
//! * sd1/sdxl's reshape and its `comfy.gguf.orig_shape` KVs, read back to the input's shapes;
//! * the refusals. See: issue #27.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_core::pass::Slice;
use ckpt_read::Checkpoint;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::util::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf-write")
        .join(name)
}

/// The golden environment's Python, if it has gguf-py.
fn python() -> Option<String> {
    let py = format!(
        "{}/target/golden-venv/bin/python",
        env!("CARGO_MANIFEST_DIR")
    );
    std::process::Command::new(&py)
        .args(["-c", "import gguf, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(py)
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One digest of per-tensor digests: SHA-256 of `name\tdigest\n` lines in name order (what
/// `make_goldens.sh` keeps).
fn combined(per_tensor: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (name, d) in per_tensor {
        text.push_str(&format!("{name}\t{d}\n"));
    }
    hex(text.as_bytes())
}

/// The generated inputs and written files of one case (`make_goldens.sh` runs the same
/// commands).
struct Case {
    _dir: Dir,
    /// The written GGUF.
    gguf: PathBuf,
    /// The input converted (for a merge, the first input: the merge keeps its dtypes).
    input: Option<PathBuf>,
    /// The merge's values as f32 safetensors (for a merge).
    values: Option<PathBuf>,
}

fn synth(dir: &Dir, name: &str, arch: &str, seed: u32, dtype: &str, parts: &str) -> PathBuf {
    let p = dir.path(name);
    let seed = seed.to_string();
    let mut args = vec![
        "synth",
        "model",
        s(&p),
        "--arch",
        arch,
        "--scale",
        "16",
        "--seed",
        &seed,
        "--dtype",
        dtype,
        "-q",
    ];
    if !parts.is_empty() {
        args.extend(["--components", parts]);
    }
    run_ok(&args);
    p
}

/// `flux-Q4_K_M` converts a generated Flux diffuser (bf16); `sdxl-Q3_K_M` a whole generated
/// SDXL (f16); `sdxl-merge-Q8_0` merges two SDXL U-Nets 0.7/0.3; `flux-merge-Q4_1` two Flux
/// diffusers; `flux-default` a .gguf without --quant.
fn case(id: &str) -> Case {
    let dir = Dir::new();
    let (model, quant) = id.rsplit_once('-').expect("MODEL-QUANT");
    let gguf = dir.path(&format!("{id}.gguf"));
    let quant_args: Vec<&str> = if quant == "default" {
        vec![]
    } else {
        vec!["--quant", quant]
    };
    let (arch, dtype, parts) = if model.starts_with("flux") {
        ("flux", "bf16", "diffuser")
    } else if model.ends_with("merge") {
        ("sdxl", "f16", "unet")
    } else {
        ("sdxl", "f16", "")
    };
    let a = synth(&dir, "a.safetensors", arch, 0, dtype, parts);
    if model.ends_with("merge") {
        let b = synth(&dir, "b.safetensors", arch, 1, dtype, parts);
        let merge = |out: &Path, extra: &[&str]| {
            let mut args = vec![
                "merge",
                "ws",
                s(&a),
                s(&b),
                "--alpha",
                "0.3",
                "-o",
                s(out),
                "--no-input-hashes",
                "-q",
            ];
            args.extend(extra);
            run_ok(&args);
        };
        merge(&gguf, &quant_args);
        let values = dir.path("values.safetensors");
        merge(&values, &["--dtype", "f32"]);
        Case {
            _dir: dir,
            gguf,
            input: Some(a),
            values: Some(values),
        }
    } else {
        let mut args = vec!["convert", s(&a), "-o", s(&gguf), "-q"];
        args.extend(&quant_args);
        run_ok(&args);
        Case {
            _dir: dir,
            gguf,
            input: Some(a),
            values: None,
        }
    }
}

/// ckpt-diff's own reading of a GGUF: per tensor, its type, logical shape, the SHA-256 of its
/// values as f32 and of its stored bytes.
struct Own {
    types: BTreeMap<String, String>,
    shapes: BTreeMap<String, Vec<usize>>,
    values: BTreeMap<String, String>,
    bytes: BTreeMap<String, String>,
}

fn own_reading(path: &Path) -> Own {
    let c = Checkpoint::open(path).expect("ckpt-diff reads its GGUF");
    let info = c.gguf().expect("a GGUF file").clone();
    let mut own = Own {
        types: BTreeMap::new(),
        shapes: BTreeMap::new(),
        values: BTreeMap::new(),
        bytes: BTreeMap::new(),
    };
    for t in c.tensors() {
        let mut v = vec![0.0f64; t.shape.iter().product()];
        Slice::of(&c, t).values_into(&mut v);
        let f32s: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        own.values.insert(t.name.clone(), hex(&f32s));
        own.bytes.insert(t.name.clone(), hex(c.data(t)));
        own.shapes.insert(t.name.clone(), t.shape.clone());
        let ty = info.ggml_type(&t.name).expect("every tensor has a type");
        own.types.insert(t.name.clone(), ty.name().to_string());
    }
    own
}

/// gguf-py's report on `case` (see check.py), when the golden environment is here.
fn gguf_py(case: &Case) -> Option<Json> {
    let py = python()?;
    let mut cmd = std::process::Command::new(py);
    cmd.arg(fixture("check.py")).arg(&case.gguf);
    if let Some(v) = &case.values {
        cmd.arg(v);
    }
    let out = cmd.output().expect("run check.py");
    assert!(
        out.status.success(),
        "check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("JSON"))
}

fn goldens() -> Json {
    let text = std::fs::read_to_string(fixture("goldens.json")).expect("goldens.json");
    serde_json::from_str(&text).expect("JSON")
}

/// (a) and (b) for one case: gguf-py live when it is here, and always the committed digests.
fn check_against_gguf_py(id: &str) {
    let case = case(id);
    let own = own_reading(&case.gguf);
    let (model, quant) = id.rsplit_once('-').expect("MODEL-QUANT");
    if quant != "default" {
        let arch = if model.starts_with("flux") {
            "flux"
        } else {
            "sdxl"
        };
        let want = expected_types(arch, case.input.as_ref().expect("an input"), quant);
        assert_eq!(own.types.len(), want.len(), "{id}: tensor count");
        for (name, t) in &want {
            assert_eq!(&own.types[name], t, "{id}: {name}, by city96's rules");
        }
    }
    let golden = &goldens()[id];
    assert_eq!(
        golden["values"].as_str(),
        Some(combined(&own.values).as_str()),
        "{id}: ckpt-diff's reading differs from gguf-py's (fixtures/gguf-write/goldens.json)"
    );
    assert_eq!(golden["tensors"].as_u64(), Some(own.values.len() as u64));
    if case.values.is_some() {
        // Every tensor of a legacy mix is a type gguf-py quantizes.
        assert_eq!(
            golden["requantized"].as_str(),
            Some(combined(&own.bytes).as_str()),
            "{id}: the file's bytes differ from gguf-py's quantize of the merged values"
        );
    }
    let Some(report) = gguf_py(&case) else {
        say_skipped(&format!(
            "{id}: gguf-py live (no target/golden-venv); checked against goldens.json"
        ));
        return;
    };
    let tensors = report["tensors"].as_object().expect("tensors");
    assert_eq!(tensors.len(), own.values.len(), "{id}: tensor count");
    for (name, t) in tensors {
        assert_eq!(t["type"].as_str(), Some(own.types[name].as_str()), "{name}");
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(shape, own.shapes[name], "{id}: {name} shape");
        assert_eq!(
            t["values"].as_str(),
            Some(own.values[name].as_str()),
            "{id}: {name} values"
        );
    }
    if case.values.is_some() {
        let req = report["requantized"].as_object().expect("requantized");
        assert_eq!(req.len(), tensors.len(), "{id}: every type is gguf-py's");
        for (name, digest) in req {
            assert_eq!(
                digest.as_str(),
                tensors[name]["bytes"].as_str(),
                "{id}: {name} ({}) differs from gguf-py's quantize",
                tensors[name]["type"]
            );
        }
    }
}

#[test]
fn test_gguf_merge_q8_0_equals_gguf_py_quantize() {
    check_against_gguf_py("sdxl-merge-Q8_0");
}

#[test]
fn test_gguf_merge_legacy_mixes_equal_gguf_py_quantize() {
    check_against_gguf_py("sdxl-merge-Q4_0");
    check_against_gguf_py("sdxl-merge-Q5_0");
    check_against_gguf_py("flux-merge-Q4_1");
    check_against_gguf_py("flux-merge-Q5_1");
}

#[test]
fn test_gguf_k_mixes_read_alike_by_gguf_py() {
    check_against_gguf_py("flux-Q4_K_M");
    check_against_gguf_py("sdxl-Q3_K_M");
    check_against_gguf_py("flux-default");
}

// ---------------------------------------------------------------------------------------
// (c) The type of each tensor, from city96's rules as a table written here.

/// City96's keep lists (lcpp.patch), by arch.
fn kept(arch: &str, name: &str) -> bool {
    let (subs, exact): (&[&str], &[&str]) = match arch {
        "flux" => (
            &[
                "txt_in.",
                "img_in.",
                "time_in.",
                "vector_in.",
                "guidance_in.",
                "final_layer.",
            ],
            &[],
        ),
        "sdxl" => (
            &[
                "class_embedding.",
                "time_embedding.",
                "add_embedding.",
                "time_embed.",
                "label_emb.",
                "conv_in.",
                "conv_out.",
            ],
            &["input_blocks.0.0.weight", "out.2.weight"],
        ),
        _ => unreachable!(),
    };
    subs.iter().any(|k| name.contains(k)) || exact.contains(&name)
}

/// The type city96's convert.py + lcpp.patch give each denoiser tensor of `input` with
/// mix `mix`, written out from the rules in the issue.
fn expected_types(arch: &str, input: &Path, mix: &str) -> BTreeMap<String, String> {
    let bytes = std::fs::read(input).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<(String, Vec<usize>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("model.diffusion_model.")?.to_string();
            Some((name, v.shape().to_vec(), v.dtype()))
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut i_v = 0;
    let mut out = BTreeMap::new();
    for (name, shape, dtype) in names {
        let n: usize = shape.iter().product();
        let last = *shape.last().unwrap_or(&1);
        let stored = if arch == "sdxl"
            && shape.len() >= 2
            && n >= 512
            && n.is_multiple_of(256)
            && !last.is_multiple_of(256)
        {
            vec![n / 256, 256]
        } else {
            shape.clone()
        };
        let wide = matches!(dtype, safetensors::Dtype::F32 | safetensors::Dtype::BF16);
        let plain = if wide && (stored.len() == 1 || n <= 1024) {
            "F32"
        } else if dtype == safetensors::Dtype::BF16 {
            "BF16"
        } else {
            "F16"
        };
        let dims = stored.len() - stored.iter().take_while(|&&d| d == 1).count();
        let eligible = name.ends_with("weight")
            && dims.max(1) == 2
            && !name.contains("_norm.weight")
            && !kept(arch, &name);
        let ty = if !eligible {
            plain.to_string()
        } else {
            let v = [
                "attn_v.weight",
                ".to_v.weight",
                ".v.weight",
                ".attn.w1v.weight",
                ".attn.w2v.weight",
                "_attn.v_proj.weight",
            ]
            .iter()
            .any(|p| name.contains(p));
            let qkv = !v
                && ["attn_qkv.weight", "attn.qkv.weight", "attention.qkv.weight"]
                    .iter()
                    .any(|p| name.contains(p));
            let ffn = !v
                && !qkv
                && ([
                    "ffn_down",
                    ".ffn.2.weight",
                    ".ff.net.2.weight",
                    ".mlp.layer2.weight",
                    ".adaln_modulation_mlp.2.weight",
                    ".feed_forward.w2.weight",
                ]
                .iter()
                .any(|p| name.contains(p))
                    || (name.contains("experts.") && name.contains(".w2.weight")));
            let t = match (mix, v, qkv, ffn) {
                ("Q4_K_M", true, _, _) => "Q6_K",
                ("Q4_K_M", _, true, _) => "Q5_K",
                ("Q4_K_M", _, _, true) => "Q6_K",
                ("Q4_K_M", ..) => "Q4_K",
                ("Q3_K_M", true, _, _) if i_v < 2 => "Q5_K",
                ("Q3_K_M", true, _, _) => "Q4_K",
                ("Q3_K_M", _, true, _) => "Q4_K",
                ("Q3_K_M", _, _, true) => "Q4_K",
                ("Q3_K_M", ..) => "Q3_K",
                ("Q4_0", _, _, true) => "Q4_1",
                ("Q5_0", _, _, true) => "Q5_1",
                (legacy @ ("Q8_0" | "Q4_0" | "Q4_1" | "Q5_0" | "Q5_1"), ..) => legacy,
                _ => unreachable!(),
            };
            if v {
                i_v += 1;
            }
            let block = if t.ends_with("_K") { 256 } else { 32 };
            let row = *stored.last().unwrap_or(&1);
            if row.is_multiple_of(block) { t } else { "F16" }.to_string()
        };
        out.insert(name, ty);
    }
    out
}

fn check_types(arch: &str, mix: &str) {
    let dir = Dir::new();
    let parts = if arch == "flux" { "diffuser" } else { "" };
    let dtype = if arch == "flux" { "bf16" } else { "f16" };
    let input = synth(&dir, "in.safetensors", arch, 0, dtype, parts);
    let out = dir.path("out.gguf");
    run_ok(&["convert", s(&input), "-o", s(&out), "--quant", mix, "-q"]);
    let own = own_reading(&out);
    let want = expected_types(arch, &input, mix);
    assert_eq!(own.types.len(), want.len(), "{arch} {mix}: tensor count");
    let mut quantized = 0;
    for (name, t) in &want {
        assert_eq!(&own.types[name], t, "{arch} {mix}: {name}");
        quantized += usize::from(t.starts_with('Q'));
    }
    // The case means something only if some tensors are quantized.
    assert!(quantized > 10, "{arch} {mix}: {quantized} quantized");
    let c = Checkpoint::open(&out).unwrap();
    let info = c.gguf().unwrap();
    let ftype = if mix == "Q4_K_M" { 15 } else { 12 };
    assert_eq!(
        info.get("general.file_type"),
        Some(&ckpt_read::gguf::Value::U32(ftype))
    );
    assert_eq!(
        info.get("general.quantization_version"),
        Some(&ckpt_read::gguf::Value::U32(2))
    );
    assert_eq!(
        info.architecture(),
        Some(if arch == "flux" { "flux" } else { "sdxl" })
    );
}

#[test]
fn test_gguf_types_follow_city96_rules() {
    check_types("flux", "Q4_K_M");
    check_types("flux", "Q3_K_M");
    check_types("sdxl", "Q4_K_M");
    check_types("sdxl", "Q3_K_M");
}

// ---------------------------------------------------------------------------------------
// (d) The sd1/sdxl reshape.

#[test]
fn test_gguf_sdxl_reshape_reads_back_to_the_input_shapes() {
    let case = case("sdxl-Q3_K_M");
    let input = case.input.as_ref().unwrap();
    let want: BTreeMap<String, Vec<usize>> = read_reference(input)
        .into_iter()
        .filter_map(|t| {
            let name = t.name.strip_prefix("model.diffusion_model.")?.to_string();
            Some((name, t.shape))
        })
        .collect();
    let own = own_reading(&case.gguf);
    assert_eq!(own.shapes, want, "ckpt-diff reads the original shapes back");
    let c = Checkpoint::open(&case.gguf).unwrap();
    let info = c.gguf().unwrap();
    let mut reshaped = 0;
    for t in &info.tensors {
        let shape = &want[&t.name];
        let n: usize = shape.iter().product();
        let kv = info.get(&format!("comfy.gguf.orig_shape.{}", t.name));
        let awkward = shape.len() >= 2
            && n >= 512
            && n.is_multiple_of(256)
            && !shape.last().unwrap().is_multiple_of(256);
        if awkward {
            reshaped += 1;
            assert_eq!(t.ne, vec![256, (n / 256) as u64], "{}", t.name);
            let dims: Vec<ckpt_read::gguf::Value> = shape
                .iter()
                .map(|&d| ckpt_read::gguf::Value::I32(d as i32))
                .collect();
            assert_eq!(
                kv,
                Some(&ckpt_read::gguf::Value::Array(
                    ckpt_read::gguf::ValueType::I32,
                    dims
                )),
                "{}",
                t.name
            );
        } else {
            assert_eq!(kv, None, "{}", t.name);
            let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            assert_eq!(t.ne, ne, "{}", t.name);
        }
    }
    assert!(reshaped > 100, "{reshaped} reshaped");
    if let Some(report) = gguf_py(&case) {
        let kvs = report["kvs"].as_object().unwrap();
        let orig: Vec<_> = kvs
            .iter()
            .filter(|(k, _)| k.starts_with("comfy.gguf.orig_shape."))
            .collect();
        assert_eq!(orig.len(), reshaped);
        for (k, v) in orig {
            assert_eq!(v["types"], serde_json::json!(["ARRAY", "INT32"]), "{k}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// (e) Refusals.

fn run_err(args: &[&str]) -> String {
    let out = ckpt_diff().args(args).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{args:?} should fail with 2");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn test_gguf_refusals() {
    let dir = Dir::new();
    let input = synth(&dir, "in.safetensors", "sd1", 0, "f16", "unet");
    let st = dir.path("out.safetensors");
    let e = run_err(&["convert", s(&input), "-o", s(&st), "--quant", "Q8_0"]);
    assert!(e.contains("name a .gguf output"), "{e}");
    let e = run_err(&[
        "merge",
        "ws",
        s(&input),
        s(&input),
        "--alpha",
        "0.5",
        "-o",
        s(&st),
        "--quant",
        "Q4_K_M",
    ]);
    assert!(e.contains("name a .gguf output"), "{e}");
    let out = dir.path("out.gguf");
    let e = run_err(&["convert", s(&input), "-o", s(&out), "--quant", "IQ2_XS"]);
    assert!(
        e.contains("Q4_K_M") && e.contains("Q8_0"),
        "lists the types: {e}"
    );
    // A GGUF written, then named as both input and output.
    run_ok(&["convert", s(&input), "-o", s(&out), "--quant", "Q8_0", "-q"]);
    let before = std::fs::read(&out).unwrap();
    let e = run_err(&[
        "convert",
        s(&out),
        "-o",
        s(&out),
        "--quant",
        "Q8_0",
        "--force",
    ]);
    assert!(e.contains("is also an input"), "{e}");
    let e = run_err(&[
        "merge",
        "ws",
        s(&out),
        s(&input),
        "--alpha",
        "0.5",
        "-o",
        s(&out),
        "--force",
    ]);
    assert!(e.contains("input"), "{e}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the input is unchanged"
    );
    // Without --force an existing output is refused before any work.
    let e = run_err(&["convert", s(&input), "-o", s(&out), "--quant", "Q8_0"]);
    assert!(e.contains("exists"), "{e}");
}

// ---------------------------------------------------------------------------------------
// (f) Tensor names ggml-based loaders refuse.

/// A denoiser tensor name of 128 bytes (ggml's `GGML_MAX_NAME` as stable-diffusion.cpp and
/// city96's llama-quantize build it, NUL included) is refused by `convert` and `merge`, named
/// with its length, with a hint naming `--allow-long-names`; one of 127 bytes passes. With the
/// option the file is written, says so, and holds the name whole.
#[test]
fn test_gguf_long_tensor_names_refused_unless_allowed() {
    let dir = Dir::new();
    let input = synth(&dir, "in.safetensors", "sd1", 0, "f16", "unet");
    let (ok, long) = ("a".repeat(127), "b".repeat(128));
    let with_long = dir.path("long.safetensors");
    rewrite(&input, &with_long, |tensors| {
        for name in [&ok, &long] {
            tensors.push(RawTensor {
                name: format!("model.diffusion_model.{name}"),
                dtype: "F16".into(),
                shape: vec![4, 32],
                data: vec![0x3c; 4 * 32 * 2],
            });
        }
    });
    let out = dir.path("out.gguf");
    for args in [
        vec!["convert", s(&with_long), "-o", s(&out), "--quant", "Q8_0"],
        vec![
            "merge",
            "ws",
            s(&with_long),
            s(&with_long),
            "--alpha",
            "0.5",
            "-o",
            s(&out),
        ],
    ] {
        let e = run_err(&args);
        assert!(
            e.contains("tensor names of 128 bytes or more")
                && e.contains(&format!("'{long}' (128 bytes)")),
            "{args:?}: {e}"
        );
        assert!(!e.contains(&ok), "127 bytes pass: {e}");
        assert!(
            e.contains("hint: ") && e.contains("--allow-long-names"),
            "{e}"
        );
        assert!(!out.exists());
    }
    let report = run_ok(&[
        "convert",
        s(&with_long),
        "-o",
        s(&out),
        "--quant",
        "Q8_0",
        "--allow-long-names",
    ]);
    assert!(
        report.contains("WARNING: wrote tensor names of 128 bytes or more")
            && report.contains(&long),
        "{report}"
    );
    let c = Checkpoint::open(&out).unwrap();
    let names: Vec<&str> = c
        .gguf()
        .unwrap()
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert!(names.contains(&long.as_str()) && names.contains(&ok.as_str()));
    let st = dir.path("out.safetensors");
    let e = run_err(&["convert", s(&with_long), "-o", s(&st), "--allow-long-names"]);
    assert!(e.contains("is for GGUF outputs"), "{e}");
}

// ---------------------------------------------------------------------------------------
// (g) ComfyUI-GGUF's own loader (opt-in: its code is not on PyPI and not committed).

/// With `CKPT_DIFF_COMFYUI_GGUF` naming a ComfyUI-GGUF checkout, `comfyui_gguf_check.py`
/// writes Flux (Q4_K_M, Q8_0), SDXL (Q4_K_M, Q8_0, with city96's reshapes) and SD1 (Q5_K_M)
/// GGUFs with this binary and loads them with ComfyUI-GGUF's `gguf_sd_loader`: every key
/// ComfyUI gets from the source checkpoint with its shape, the ggml types, ComfyUI's model
/// detection equal to the source's, and values from ComfyUI-GGUF's torch dequantizers equal to
/// ckpt-diff's reading. Without the variable the test says it skipped.
#[test]
fn test_gguf_comfyui_gguf_loader_reads_what_is_written() {
    let Some(checkout) = ckpt_read::env::COMFYUI_GGUF.get() else {
        say_skipped("ComfyUI-GGUF's loader (set CKPT_DIFF_COMFYUI_GGUF to a checkout)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let comfyui = ckpt_read::env::COMFYUI
        .get()
        .map_or_else(|| root.join("target/ComfyUI"), PathBuf::from);
    let python = ckpt_read::env::COMFYUI_PYTHON
        .get()
        .map_or_else(|| root.join("target/cui-venv/bin/python"), PathBuf::from);
    let out = std::process::Command::new(&python)
        .arg(fixture("comfyui_gguf_check.py"))
        .args(["--comfyui-gguf", &checkout])
        .arg("--comfyui")
        .arg(&comfyui)
        .args(["--ckpt-diff", env!("CARGO_BIN_EXE_ckpt-diff")])
        .env(ckpt_read::env::XDG_CACHE_HOME.name, test_cache())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "ComfyUI-GGUF's loader disagrees:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("5 of 5 cases pass"), "{stdout}");
}
