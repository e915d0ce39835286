//! `ckpt-diff validate` finds each defect, and `ckpt-diff fix` repairs it: for every defect,
//! a generated file that has it, the finding, the fix, and a clean validation after.

use std::path::{Path, PathBuf};

use ckpt_core::catalog::{Arch, Component};
use ckpt_ops::synth::{Layout, Synthetic};
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

const POS: &str = "cond_stage_model.transformer.text_model.embeddings.position_ids";

struct Case {
    d: Dir,
    base: PathBuf,
}

fn case() -> Case {
    case_of(arch("sd1"))
}

fn case_of(arch: Arch) -> Case {
    let d = Dir::new();
    let base = d.model(
        "base.safetensors",
        &layout(arch, 32, FloatFormat::F16),
        &Synthetic::base(arch, 1),
    );
    Case { d, base }
}

/// `validate --json` of one file: (exit code, findings).
fn findings(p: &Path) -> (i32, Vec<serde_json::Value>) {
    let out = ckpt_diff()
        .args(["validate", s(p), "--json"])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (
        out.status.code().unwrap(),
        j["files"][0]["findings"].as_array().unwrap().clone(),
    )
}

fn has(f: &[serde_json::Value], code: &str, severity: &str) -> bool {
    f.iter()
        .any(|x| x["code"] == code && x["severity"] == severity)
}

/// The defect is reported with `code`/`severity` and the expected exit code; `fix` with
/// `args` makes the file validate clean (exit 0: nothing worse than info).
fn found_and_fixed(
    c: &Case,
    bad: &Path,
    code: &str,
    severity: &str,
    exit: i32,
    args: &[&str],
) -> PathBuf {
    let (e, f) = findings(bad);
    assert!(has(&f, code, severity), "{code} ({severity}) not in {f:#?}");
    assert_eq!(e, exit, "exit code for {code}");
    let out = c.d.path(&format!("fixed-{code}.safetensors"));
    let mut a = vec!["fix", s(bad), "-o", s(&out), "--force"];
    a.extend(args);
    let (fe, stdout, stderr) = run_code(&a);
    assert_eq!(
        fe, 0,
        "fix of {code} did not validate clean:\n{stdout}\n{stderr}"
    );
    let (e2, f2) = findings(&out);
    assert_eq!(e2, 0, "after fix: {f2:#?}");
    assert!(
        !f2.iter()
            .any(|x| x["code"] == code && x["severity"] != "info"),
        "{code} still reported"
    );
    out
}

#[test]
fn clean_file_is_clean() {
    let c = case();
    let (e, f) = findings(&c.base);
    assert_eq!(e, 0, "{f:#?}");
}

#[test]
fn missing_required_keys() {
    let c = case();
    let bad = missing_found_and_fixed(&c, "first_stage_model.decoder.up.0.");
    // Without a base it cannot be fixed: fix says so and exits non-zero.
    let (code, stdout, _) = run_code(&["fix", s(&bad), "-o", s(&c.d.path("nobase.safetensors"))]);
    assert_eq!(code, 2);
    assert!(
        stdout.contains("not fixed") && stdout.contains("--base"),
        "{stdout}"
    );
}

#[test]
fn ema_weights() {
    let c = case();
    let mut l = layout(arch("sd1"), 32, FloatFormat::F16);
    l.ema = true;
    let bad =
        c.d.model("ema.safetensors", &l, &Synthetic::base(arch("sd1"), 1));
    let out = found_and_fixed(&c, &bad, "ema", "warning", 1, &["--drop-ema"]);
    assert!(
        !reference_map(&out)
            .keys()
            .any(|k| k.starts_with("model_ema."))
    );
}

/// The base without the keys under `prefix`: found, and filled from the base by
/// `fix --base`. Returns the broken file.
fn missing_found_and_fixed(c: &Case, prefix: &str) -> PathBuf {
    let bad = c.d.path("missing.safetensors");
    rewrite(&c.base, &bad, |t| t.retain(|x| !x.name.starts_with(prefix)));
    let out = found_and_fixed(
        c,
        &bad,
        "missing-required",
        "error",
        2,
        &["--base", s(&c.base)],
    );
    let (a, b) = (reference_map(&out), reference_map(&c.base));
    let k = b.keys().find(|k| k.starts_with(prefix)).unwrap();
    assert_eq!(a[k].values, b[k].values, "{k}: filled from the base");
    bad
}

/// The base with a foreign scalar `name` added: found, and dropped by `fix --drop-junk`.
fn junk_found_and_fixed(c: &Case, name: &str) {
    let bad = c.d.path("junk.safetensors");
    rewrite(&c.base, &bad, |t| {
        t.push(RawTensor {
            name: name.into(),
            dtype: "F32".into(),
            shape: vec![],
            data: 1f32.to_le_bytes().to_vec(),
        });
    });
    found_and_fixed(c, &bad, "unexpected-keys", "warning", 1, &["--drop-junk"]);
}

/// The base with `weight` flattened: found, and restored from the base.
fn flattened_found_and_fixed(c: &Case, weight: &str) {
    let bad = c.d.path("shape.safetensors");
    rewrite(&c.base, &bad, |t| {
        let x = t.iter_mut().find(|x| x.name == weight).unwrap();
        x.shape = vec![x.shape.iter().product()];
    });
    found_and_fixed(c, &bad, "wrong-shape", "error", 2, &["--base", s(&c.base)]);
}

#[test]
fn junk_keys() {
    junk_found_and_fixed(&case(), "lora_unet_down.alpha");
}

#[test]
fn wrong_shapes() {
    flattened_found_and_fixed(&case(), "model.diffusion_model.out.2.weight");
}

#[test]
fn mixed_and_wasteful_dtypes() {
    let c = case();
    let bad = c.d.path("mixed.safetensors");
    rewrite(&c.base, &bad, |t| {
        for x in t
            .iter_mut()
            .filter(|x| x.name.starts_with("first_stage_model.") && x.dtype == "F16")
        {
            x.data = x
                .data
                .chunks_exact(2)
                .flat_map(|h| {
                    half::f16::from_le_bytes([h[0], h[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            x.dtype = "F32".into();
        }
    });
    let out = found_and_fixed(&c, &bad, "mixed-dtypes", "warning", 1, &["--dtype", "f16"]);
    // f16 -> f32 -> f16 is exact: the fixed file equals the original.
    let (a, b) = (reference_map(&out), reference_map(&c.base));
    assert!(a.iter().all(|(k, t)| t.values == b[k].values));
    let wide = c.d.model(
        "f32.safetensors",
        &layout(arch("sd1"), 32, FloatFormat::F32),
        &Synthetic::base(arch("sd1"), 1),
    );
    found_and_fixed(
        &c,
        &wide,
        "wasteful-dtype",
        "warning",
        1,
        &["--dtype", "f16"],
    );
}

#[test]
fn nan_and_infinity() {
    let c = case();
    let bad = c.d.path("nan.safetensors");
    let key = "model.diffusion_model.middle_block.1.proj_in.weight";
    rewrite(&c.base, &bad, |t| {
        let x = t.iter_mut().find(|x| x.name == key).unwrap();
        x.data[0..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        x.data[4..6].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        x.data[8..10].copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
    });
    let (_, f) = findings(&bad);
    let n = f.iter().find(|x| x["code"] == "nonfinite").unwrap();
    assert!(
        n["keys"][0].as_str().unwrap().contains("(1 NaN, 2 Inf)"),
        "{n}"
    );
    let with_base = found_and_fixed(&c, &bad, "nonfinite", "error", 2, &["--base", s(&c.base)]);
    assert_eq!(
        reference_map(&with_base)[key].values,
        reference_map(&c.base)[key].values,
        "base values restored"
    );
    let zeroed = found_and_fixed(&c, &bad, "nonfinite", "error", 2, &[]);
    let v = reference_map(&zeroed)[key].values.clone().unwrap();
    assert_eq!((v[0], v[2], v[4]), (0.0, 0.0, 0.0));
}

fn with_position_ids(
    c: &Case,
    name: &str,
    dtype: &str,
    shape: Vec<usize>,
    data: Vec<u8>,
) -> PathBuf {
    let bad = c.d.path(name);
    rewrite(&c.base, &bad, |t| {
        let x = t.iter_mut().find(|x| x.name == POS).unwrap();
        x.dtype = dtype.into();
        x.shape = shape;
        x.data = data;
    });
    bad
}

fn assert_ids_fixed(p: &Path) {
    let c = ckpt_read::Checkpoint::open(p).unwrap();
    let t = c.get(POS).unwrap();
    assert_eq!(
        (t.dtype, t.shape.clone()),
        (ckpt_read::Dtype::I64, vec![1, 77])
    );
    let ids: Vec<i64> = c
        .data(t)
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(ids, (0..77).collect::<Vec<_>>());
}

#[test]
fn position_ids_float_drifted_scaled_misshapen_missing() {
    let c = case();
    let fixed = |p: &Path, code: &str, severity: &str, exit: i32| {
        assert_ids_fixed(&found_and_fixed(&c, p, code, severity, exit, &[]));
    };
    // Float but exact: a warning (a merge would drift it).
    let exact: Vec<u8> = (0..77).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let p = with_position_ids(&c, "float.safetensors", "F32", vec![1, 77], exact);
    fixed(&p, "position-ids-dtype", "warning", 1);
    // Drifted like AnythingV3: 76 became 75.9975 (truncates to 75).
    let drift: Vec<u8> = (0..77)
        .flat_map(|i| (i as f32 * 0.999_967).to_le_bytes())
        .collect();
    let p = with_position_ids(&c, "drift.safetensors", "F32", vec![1, 77], drift);
    let (_, f) = findings(&p);
    assert!(
        f.iter().any(|x| x["code"] == "position-ids-values"
            && x["message"].as_str().unwrap().contains("truncate")),
        "{f:#?}"
    );
    fixed(&p, "position-ids-values", "error", 2);
    // Scaled by an add-difference, in fp16 (0, 0.583, 1.166, ...).
    let scaled: Vec<u8> = (0..77)
        .flat_map(|i| half::f16::from_f32(i as f32 * 0.583).to_le_bytes())
        .collect();
    let p = with_position_ids(&c, "scaled.safetensors", "F16", vec![1, 77], scaled);
    fixed(&p, "position-ids-values", "error", 2);
    // Wrong shape.
    let flat: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    let p = with_position_ids(&c, "flat.safetensors", "I64", vec![77], flat);
    fixed(&p, "position-ids-shape", "error", 2);
    // Missing.
    let p = c.d.path("noids.safetensors");
    rewrite(&c.base, &p, |t| t.retain(|x| x.name != POS));
    fixed(&p, "position-ids-missing", "warning", 1);
}

#[test]
fn pruned_sdxl_is_usable_not_broken() {
    let d = Dir::new();
    let full = d.model(
        "full.safetensors",
        &layout(arch("sdxl"), 32, FloatFormat::F16),
        &Synthetic::base(arch("sdxl"), 2),
    );
    let mut l: Layout = layout(arch("sdxl"), 32, FloatFormat::F16);
    l.prune_text_encoders = true;
    l.vpred_markers = true;
    let pruned = d.model("pruned.safetensors", &l, &Synthetic::base(arch("sdxl"), 2));
    let (e, f) = findings(&pruned);
    assert_eq!(
        e, 0,
        "a pruned SDXL file must not be reported broken: {f:#?}"
    );
    assert!(has(&f, "pruned", "info"));
    assert!(
        f.iter()
            .any(|x| x["code"] == "variant"
                && x["message"].as_str().unwrap().contains("v-prediction"))
    );
    // Restoring the pruned layers from a full file.
    let out = d.path("restored.safetensors");
    let (code, stdout, _) = run_code(&words(
        "fix {} -o {} --base {} --fill-optional",
        &[s(&pruned), s(&out), s(&full)],
    ));
    assert_eq!(code, 0, "{stdout}");
    let (_, f2) = findings(&out);
    assert!(!has(&f2, "pruned", "info"), "{f2:#?}");
}

#[test]
fn missing_component_and_schedule_and_old_names() {
    let c = case();
    let mut l = layout(arch("sd1"), 32, FloatFormat::F16);
    l.components = vec![
        Component::named("unet").unwrap(),
        Component::named("te1").unwrap(),
    ];
    l.scheduler = true;
    l.old_clip_names = true;
    let p =
        c.d.model("partial.safetensors", &l, &Synthetic::base(arch("sd1"), 1));
    let (e, f) = findings(&p);
    assert_eq!(e, 1, "{f:#?}");
    assert!(
        has(&f, "missing-component", "warning")
            && has(&f, "scheduler-buffers", "info")
            && has(&f, "old-clip-names", "info")
    );
    let out = found_and_fixed(
        &c,
        &p,
        "missing-component",
        "warning",
        1,
        &["--base", s(&c.base), "--drop-scheduler"],
    );
    let names = reference_map(&out);
    assert!(
        names.contains_key("cond_stage_model.transformer.text_model.final_layer_norm.weight"),
        "renamed to current names"
    );
    assert!(!names.contains_key("betas"));
}

/// Flux.1 and SD3.5: a missing block, a foreign key and a misshapen weight, each found
/// against the architecture's layout and fixed.
#[test]
fn dit_missing_extra_and_misshapen_keys() {
    for (arch, block, weight) in [
        (
            arch("flux"),
            "model.diffusion_model.single_blocks.7.",
            "model.diffusion_model.double_blocks.3.img_attn.qkv.weight",
        ),
        (
            arch("sd35m"),
            "model.diffusion_model.joint_blocks.5.",
            "model.diffusion_model.joint_blocks.2.x_block.attn2.qkv.weight",
        ),
    ] {
        let c = case_of(arch);
        let (e, f) = findings(&c.base);
        assert_eq!(e, 0, "{arch:?} clean: {f:#?}");
        missing_found_and_fixed(&c, block);

        junk_found_and_fixed(&c, "lora_unet_double_blocks_0.alpha");
        flattened_found_and_fixed(&c, weight);
    }
}

/// `fix --dtype bf16` of a scaled-FP8 file stores each weight times its scale, and the
/// scales and the marker go.
#[test]
fn scaled_fp8_fixed_to_bf16_is_dequantized() {
    let d = Dir::new();
    let mut l = layout(arch("flux"), 32, FloatFormat::F8E4M3);
    l.scaled_fp8 = true;
    let q = d.model("q.safetensors", &l, &Synthetic::base(arch("flux"), 2));
    let out = d.path("bf16.safetensors");
    let (code, stdout, stderr) = run_code(&["fix", s(&q), "-o", s(&out), "--dtype", "bf16"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let want = dequantized_map(&q);
    let got = reference_map(&out);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "no scale or marker left"
    );
    for (k, w) in &want {
        let (Some(g), Some(w)) = (&got[k].values, &w.values) else {
            continue;
        };
        for (g, w) in g.iter().zip(w) {
            assert_eq!(*g, half::bf16::from_f64(*w).to_f64(), "{k}");
        }
    }
}
