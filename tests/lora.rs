//! LoRA files: each module mapped to the checkpoint key it patches and to its block, for
//! kohya's naming rules, checked against pairs written out here from those rules (not from
//! the code's table); unknown modules reported; `inspect` on a LoRA.

use crate::util::*;

/// (kohya stem, the key it patches, its block), by the naming rule: `lora_unet_` + the
/// layer's module path with `.` as `_`; SD1 in diffusers paths (down_blocks.1.attentions.0 is
/// input_blocks.4.1; up_blocks.3.attentions.2 is output_blocks.11.1; resnet conv1 is
/// in_layers.2), SDXL in the single-file paths sd-scripts' SDXL U-Net has.
const SD1: &[(&str, &str, &str)] = &[
    (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "IN04",
    ),
    (
        "lora_unet_up_blocks_3_attentions_2_proj_out",
        "model.diffusion_model.output_blocks.11.1.proj_out.weight",
        "OUT11",
    ),
    (
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
        "M00",
    ),
    (
        "lora_unet_down_blocks_0_resnets_1_conv1",
        "model.diffusion_model.input_blocks.2.0.in_layers.2.weight",
        "IN02",
    ),
    (
        "lora_te_text_model_encoder_layers_11_self_attn_v_proj",
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.v_proj.weight",
        "TE1",
    ),
];

const SDXL: &[(&str, &str, &str)] = &[
    (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "IN04",
    ),
    (
        "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_k",
        "model.diffusion_model.output_blocks.2.1.transformer_blocks.9.attn2.to_k.weight",
        "OUT02",
    ),
    (
        "lora_unet_middle_block_1_proj_in",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "M00",
    ),
    // The same layer in diffusers paths (down_blocks.1.attentions.0 is input_blocks.4.1).
    (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_out_0",
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_out.0.weight",
        "IN04",
    ),
    (
        "lora_te1_text_model_encoder_layers_3_mlp_fc2",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
        "TE1",
    ),
];

#[test]
fn kohya_modules_map_to_their_keys_and_blocks() {
    let dir = Dir::new();
    for (arch, pairs, label) in [("SD1 (LDM)", SD1, "sd1"), ("SDXL base (SGM)", SDXL, "sdxl")] {
        let mut tensors = Vec::new();
        for (i, (stem, _, _)) in pairs.iter().enumerate() {
            // One LoCon module (a 3x3 down) and mixed ranks.
            let kernel = if stem.contains("resnets_1_conv1") {
                3
            } else {
                0
            };
            let m = Lora::new(stem, [4 + 4 * (i % 2), 8, 8, kernel], 2.0, i as u64);
            tensors.extend(m.tensors());
        }
        let unknown = Lora::new("lora_unet_not_a_layer_of_any_model", [4, 8, 8, 0], 4.0, 99);
        tensors.extend(unknown.tensors());
        let path = dir.path(&format!("{label}.safetensors"));
        write_raw(
            &path,
            &tensors,
            &[
                ("ss_network_module", "networks.lora"),
                ("ss_resolution", "(1024, 1024)"),
                (
                    "ss_tag_frequency",
                    r#"{"10_astolfo": {"astolfo": 40, " 1boy": 38, "pink hair": 12}}"#,
                ),
            ],
            0,
        );
        let v = run_json(&["inspect", s(&path)]);
        assert_eq!(v["arch"], label, "{v}");
        let modules = v["modules"].as_array().unwrap();
        assert_eq!(modules.len(), pairs.len() + 1, "{v}");
        for (stem, key, block) in pairs.iter() {
            let m = modules
                .iter()
                .find(|m| m["stem"] == *stem)
                .unwrap_or_else(|| panic!("{stem} missing"));
            assert_eq!(m["target"], *key, "{stem}");
            assert_eq!(m["block"], *block, "{stem}");
            assert_eq!(m["alpha"], 2.0, "{stem}");
        }
        assert_eq!(
            v["unknown"],
            serde_json::json!(["lora_unet_not_a_layer_of_any_model"]),
            "{label}"
        );
        let text = run_ok(&["inspect", s(&path)]);
        assert!(text.contains(arch), "{text}");
        assert!(text.contains("rank: 4 (4), 8 (2)"), "{text}");
        assert!(
            text.contains("3 tags; most frequent: astolfo (40), 1boy (38), pink hair (12)"),
            "{text}"
        );
        assert!(
            text.contains("modules that patch no key of this architecture (1)"),
            "{text}"
        );
        if label == "sd1" {
            assert!(
                text.contains("LoRA+LoCon") || text.contains("LoCon+LoRA"),
                "{text}"
            );
        }
    }
}

/// Deterministic values in (-1, 1) (a 64-bit LCG), rounded to f16 as stored.
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            half::f16::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).to_f32()
        })
        .collect()
}

struct Lora {
    stem: &'static str,
    rank: usize,
    inp: usize,
    out: usize,
    kernel: usize,
    alpha: f32,
    seed: u64,
}

/// A LoRA file `name` in `dir` holding `loras`' modules.
fn lora_file(dir: &Dir, name: &str, loras: &[Lora]) -> std::path::PathBuf {
    let p = dir.path(name);
    let ts: Vec<RawTensor> = loras.iter().flat_map(Lora::tensors).collect();
    write_raw(&p, &ts, &[], 0);
    p
}

impl Lora {
    /// A module named `stem` with its rank, input and output width and kernel (0 for a linear
    /// layer), its alpha and the seed of its factors.
    const fn new(stem: &'static str, dims: [usize; 4], alpha: f32, seed: u64) -> Self {
        let [rank, inp, out, kernel] = dims;
        Self {
            stem,
            rank,
            inp,
            out,
            kernel,
            alpha,
            seed,
        }
    }

    fn cols(&self) -> usize {
        self.inp * self.kernel.max(1) * self.kernel.max(1)
    }
    fn down(&self) -> Vec<f32> {
        noise(self.seed, self.rank * self.cols())
    }
    fn up(&self) -> Vec<f32> {
        noise(self.seed + 1, self.out * self.rank)
    }
    fn tensors(&self) -> Vec<RawTensor> {
        let bytes = |v: Vec<f32>| {
            v.iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        };
        let k = self.kernel;
        let (ds, us) = if k > 0 {
            (
                vec![self.rank, self.inp, k, k],
                vec![self.out, self.rank, 1, 1],
            )
        } else {
            (vec![self.rank, self.inp], vec![self.out, self.rank])
        };
        vec![
            RawTensor {
                name: format!("{}.lora_down.weight", self.stem),
                dtype: "F16".into(),
                shape: ds,
                data: bytes(self.down()),
            },
            RawTensor {
                name: format!("{}.lora_up.weight", self.stem),
                dtype: "F16".into(),
                shape: us,
                data: bytes(self.up()),
            },
            RawTensor {
                name: format!("{}.alpha", self.stem),
                dtype: "F32".into(),
                shape: vec![],
                data: self.alpha.to_le_bytes().to_vec(),
            },
        ]
    }
    /// ΔW = alpha/rank · up · down, materialised (out × cols), element by element.
    fn delta(&self) -> Vec<f64> {
        let (d, u, c) = (self.down(), self.up(), self.cols());
        let s = self.alpha as f64 / self.rank as f64;
        let mut w = vec![0.0; self.out * c];
        for o in 0..self.out {
            for j in 0..c {
                for r in 0..self.rank {
                    w[o * c + j] += s * u[o * self.rank + r] as f64 * d[r * c + j] as f64;
                }
            }
        }
        w
    }
}

#[test]
fn lora_sim_equals_the_cosine_of_the_materialised_changes() {
    let q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let k = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k";
    let conv = "lora_unet_down_blocks_0_resnets_1_conv1";
    let te = "lora_te_text_model_encoder_layers_11_self_attn_v_proj";
    let a = [
        Lora::new(q, [4, 40, 40, 0], 2.0, 1),
        Lora::new(k, [4, 48, 40, 0], 4.0, 3),
        Lora::new(conv, [2, 20, 20, 3], 1.0, 5),
        Lora::new(te, [8, 48, 48, 0], 8.0, 7),
    ];
    // Other ranks and alphas; `to_k` only in A; the TE module shares A's factors exactly.
    let b = [
        Lora::new(q, [8, 40, 40, 0], 1.0, 11),
        Lora::new(conv, [3, 20, 20, 3], 3.0, 13),
        Lora::new(te, [8, 48, 48, 0], 4.0, 7),
    ];
    let dir = Dir::new();
    let write = |name: &str, ls: &[Lora]| lora_file(&dir, name, ls);
    let (pa, pb) = (write("a.safetensors", &a), write("b.safetensors", &b));
    let v = run_json(&["sim", s(&pa), s(&pb)]);
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    // Blocks: IN04 holds to_q and to_k, IN02 the conv, TE1 the text encoder.
    let block_of = |stem: &str| {
        if stem == conv {
            "IN02"
        } else if stem == te {
            "TE1"
        } else {
            "IN04"
        }
    };
    let (mut ti, mut ta, mut tb) = (0.0, 0.0, 0.0);
    for block in ["IN02", "IN04", "TE1"] {
        let (mut inner, mut na, mut nb) = (0.0, 0.0, 0.0);
        for x in a.iter().filter(|l| block_of(l.stem) == block) {
            let dx = x.delta();
            na += dot(&dx, &dx);
            if let Some(y) = b.iter().find(|l| l.stem == x.stem) {
                inner += dot(&dx, &y.delta());
            }
        }
        for y in b.iter().filter(|l| block_of(l.stem) == block) {
            let dy = y.delta();
            nb += dot(&dy, &dy);
        }
        let want = inner / (na * nb).sqrt();
        let row = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["block"] == block)
            .unwrap_or_else(|| panic!("{block}: {v}"));
        let got = row["cosine"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-9,
            "{block}: {got} vs materialised {want}"
        );
        (ti, ta, tb) = (ti + inner, ta + na, tb + nb);
    }
    let total = v["total"]["cosine"].as_f64().unwrap();
    assert!((total - ti / (ta * tb).sqrt()).abs() <= 1e-9);
    // Same factors, other alpha: the direction is the same.
    let te_row = find_row(&v["rows"], "block", "TE1");
    assert!((te_row["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    let (code, _, err) = run_code(&["sim", s(&pa), s(&dir.path("missing.safetensors"))]);
    assert_ne!(code, 0, "{err}");
}

/// A generated checkpoint of `arch` at 1/8 width.
fn generated(
    dir: &Dir,
    name: &str,
    arch: ckpt_core::catalog::Arch,
    dtype: ckpt_read::dtype::FloatFormat,
    seed: u64,
) -> std::path::PathBuf {
    dir.model(
        name,
        &layout(arch, 8, dtype),
        &ckpt_ops::synth::Synthetic::base(arch, seed),
    )
}

/// f16 values of `shape` from the LCG, as raw little-endian bytes and as the f32 they are.
fn f16_tensor(name: String, shape: Vec<usize>, seed: u64, amp: f32) -> (RawTensor, Vec<f32>) {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = noise(seed, n)
        .iter()
        .map(|x| half::f16::from_f32(x * amp).to_f32())
        .collect();
    let data = v
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    (
        RawTensor {
            name,
            dtype: "F16".into(),
            shape,
            data,
        },
        v,
    )
}

fn alpha_tensor(stem: &str, alpha: f32) -> RawTensor {
    RawTensor {
        name: format!("{stem}.alpha"),
        dtype: "F32".into(),
        shape: vec![],
        data: alpha.to_le_bytes().to_vec(),
    }
}

/// (a×k) · (k×b) in f32, the naive triple loop.
fn matmul(a: &[f32], b: &[f32], rows: usize, k: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            let mut s = 0f32;
            for t in 0..k {
                s += a[i * k + t] * b[t * cols + j];
            }
            out[i * cols + j] = s;
        }
    }
    out
}

/// Each patched checkpoint key with its ΔW in f32.
type Changes = Vec<(String, Vec<f32>)>;

/// One module of each network type for a generated SD1 at 1/8 width, with its ΔW
/// materialised in f32 from the formulas (LoRA/LoCon: α/r·up·down; LoHa:
/// α/r·(w1a·w1b)⊙(w2a·w2b); LoKr: α/r·(w1 ⊗ w2a·w2b)), keyed by the checkpoint key it
/// patches (named by kohya's rule, see the SD1 table above).
fn every_network(
    shapes: &std::collections::BTreeMap<String, Vec<usize>>,
    seed: u64,
) -> (Vec<RawTensor>, Changes) {
    let mut tensors = Vec::new();
    let mut deltas = Vec::new();
    let key = |k: &str| format!("model.diffusion_model.{k}.weight");
    // LoRA on IN04's attn1.to_q.
    let stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let k = key("input_blocks.4.1.transformer_blocks.0.attn1.to_q");
    let (o, i) = (shapes[&k][0], shapes[&k][1]);
    let r = 4;
    let (td, d) = f16_tensor(format!("{stem}.lora_down.weight"), vec![r, i], seed, 1.0);
    let (tu, u) = f16_tensor(format!("{stem}.lora_up.weight"), vec![o, r], seed + 1, 1.0);
    tensors.extend([td, tu, alpha_tensor(stem, 2.0)]);
    let w = matmul(&u, &d, o, r, i);
    deltas.push((k, w.iter().map(|x| x * 2.0 / r as f32).collect()));
    // LoCon: a 3x3 down on IN02's resnet conv1 (input_blocks.2.0.in_layers.2), 1x1 up.
    let stem = "lora_unet_down_blocks_0_resnets_1_conv1";
    let k = key("input_blocks.2.0.in_layers.2");
    let s = &shapes[&k];
    let (o, cols) = (s[0], s[1] * s[2] * s[3]);
    let r = 3;
    let (td, d) = f16_tensor(
        format!("{stem}.lora_down.weight"),
        vec![r, s[1], 3, 3],
        seed + 2,
        1.0,
    );
    let (tu, u) = f16_tensor(
        format!("{stem}.lora_up.weight"),
        vec![o, r, 1, 1],
        seed + 3,
        1.0,
    );
    tensors.extend([td, tu, alpha_tensor(stem, 1.5)]);
    let w = matmul(&u, &d, o, r, cols);
    deltas.push((k, w.iter().map(|x| x * 1.5 / r as f32).collect()));
    // LoHa on OUT11's proj_out (a 1x1 convolution: w1b is r × in).
    let stem = "lora_unet_up_blocks_3_attentions_2_proj_out";
    let k = key("output_blocks.11.1.proj_out");
    let s = &shapes[&k];
    let (o, cols) = (s[0], s[1..].iter().product::<usize>());
    let r = 2;
    let (a1, va1) = f16_tensor(format!("{stem}.hada_w1_a"), vec![o, r], seed + 4, 1.0);
    let (b1, vb1) = f16_tensor(format!("{stem}.hada_w1_b"), vec![r, cols], seed + 5, 1.0);
    let (a2, va2) = f16_tensor(format!("{stem}.hada_w2_a"), vec![o, r], seed + 6, 1.0);
    let (b2, vb2) = f16_tensor(format!("{stem}.hada_w2_b"), vec![r, cols], seed + 7, 1.0);
    tensors.extend([a1, b1, a2, b2, alpha_tensor(stem, 1.0)]);
    let (p1, p2) = (
        matmul(&va1, &vb1, o, r, cols),
        matmul(&va2, &vb2, o, r, cols),
    );
    deltas.push((
        k,
        p1.iter()
            .zip(&p2)
            .map(|(x, y)| x * y * 1.0 / r as f32)
            .collect(),
    ));
    // LoKr on the text encoder's last v_proj: w1 full (4×4), w2 = w2a·w2b (rank 3).
    let stem = "lora_te_text_model_encoder_layers_11_self_attn_v_proj";
    let k = "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.v_proj.weight"
        .to_string();
    let (o, i) = (shapes[&k][0], shapes[&k][1]);
    let (a, b) = (4, 4);
    let (c, dd) = (o / a, i / b);
    let r = 3;
    let (w1, v1) = f16_tensor(format!("{stem}.lokr_w1"), vec![a, b], seed + 8, 1.0);
    let (w2a, v2a) = f16_tensor(format!("{stem}.lokr_w2_a"), vec![c, r], seed + 9, 1.0);
    let (w2b, v2b) = f16_tensor(format!("{stem}.lokr_w2_b"), vec![r, dd], seed + 10, 1.0);
    tensors.extend([w1, w2a, w2b, alpha_tensor(stem, 6.0)]);
    let w2 = matmul(&v2a, &v2b, c, r, dd);
    let mut kron = vec![0f32; o * i];
    for p in 0..a {
        for q in 0..b {
            for x in 0..c {
                for y in 0..dd {
                    kron[(p * c + x) * i + q * dd + y] =
                        v1[p * b + q] * w2[x * dd + y] * 6.0 / r as f32;
                }
            }
        }
    }
    deltas.push((k, kron));
    (tensors, deltas)
}

/// |got − want| within one f16 step at `want`'s magnitude (the output is rounded once; the
/// reference's f32 products may round the other way).
fn within_f16_step(got: f64, want: f64) -> bool {
    let step = if want.abs() < 6.1e-5 {
        2f64.powi(-24)
    } else {
        2f64.powi(want.abs().log2().floor() as i32 - 10)
    };
    (got - want).abs() <= step
}

fn shapes_of(path: &std::path::Path) -> std::collections::BTreeMap<String, Vec<usize>> {
    read_reference(path)
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect()
}

/// A generated SD1 (f16, 1/8 width) at `base.safetensors` in `dir`, and the tensors and
/// changes of one module of each network type for it (see `every_network`).
fn sd1_with_every_network(dir: &Dir, seed: u64) -> (std::path::PathBuf, Vec<RawTensor>, Changes) {
    let base = generated(
        dir,
        "base.safetensors",
        arch("sd1"),
        ckpt_read::dtype::FloatFormat::F16,
        3,
    );
    let (tensors, deltas) = every_network(&shapes_of(&base), seed);
    (base, tensors, deltas)
}

#[test]
fn bake_equals_the_materialised_change_for_every_network_type() {
    let dir = Dir::new();
    let (base, mut tensors, deltas) = sd1_with_every_network(&dir, 40);
    // A module no SD1 key has: listed as not baked, never dropped silently.
    let (td, _) = f16_tensor(
        "lora_unet_not_a_layer.lora_down.weight".into(),
        vec![2, 8],
        1,
        1.0,
    );
    let (tu, _) = f16_tensor(
        "lora_unet_not_a_layer.lora_up.weight".into(),
        vec![8, 2],
        2,
        1.0,
    );
    tensors.extend([td, tu]);
    let lora = dir.path("every.safetensors");
    write_raw(&lora, &tensors, &[], 0);
    // LoRA Block Weight's 17 values (BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00,
    // OUT03..OUT11): BASE 0.25, IN02 0.5, IN04 0.75, OUT11 1.25.
    let lbw = "0.25,1,0.5,0.75,1,1,1,1,1,1,1,1,1,1,1,1,1.25";
    let strength = |key: &str| {
        if key.starts_with("cond_stage_model") {
            0.25
        } else if key.contains("input_blocks.2.") {
            0.5
        } else if key.contains("input_blocks.4.") {
            0.75
        } else {
            1.25
        }
    };
    let recipe = dir.path("bake.recipe");
    std::fs::write(
        &recipe,
        format!(
            "M = \"{}\"\nL = \"{}\"\nOUT = M + lora(L, strength=({lbw})) x 0.8\n",
            s(&base),
            s(&lora)
        ),
    )
    .unwrap();
    let out = dir.path("out.safetensors");
    let text = run_ok(&["merge", s(&recipe), "-o", s(&out), "--dry-run"]);
    assert!(text.contains("LoRA 'L' (LoRA+LoCon+LoHa+LoKr"), "{text}");
    assert!(text.contains("4 of 5 modules baked"), "{text}");
    assert!(text.contains("lora_unet_not_a_layer"), "{text}");
    run_ok(&["merge", s(&recipe), "-o", s(&out), "-q"]);
    let model = reference_map(&base);
    let got = reference_map(&out);
    assert_eq!(model.len(), got.len());
    for (key, t) in &model {
        let (Some(g), Some(m)) = (got[key].values.as_ref(), t.values.as_ref()) else {
            continue; // position_ids
        };
        match deltas.iter().find(|(k, _)| k == key) {
            Some((_, d)) => {
                let c = 0.8 * strength(key);
                let mut changed = 0;
                for (idx, ((g, m), d)) in g.iter().zip(m).zip(d).enumerate() {
                    let want = m + c * *d as f64;
                    assert!(
                        within_f16_step(*g, want),
                        "{key}[{idx}]: {g} vs {want} (model {m}, ΔW {d})"
                    );
                    changed += usize::from(g != m);
                }
                assert!(changed > g.len() / 2, "{key}: only {changed} changed");
            }
            None => assert_eq!(g, m, "{key} is patched by no module: unchanged"),
        }
    }
}

#[test]
fn twenty_loras_in_one_pass_equal_twenty_bakes_one_at_a_time() {
    use ckpt_read::dtype::FloatFormat;
    let dir = Dir::new();
    let base = generated(&dir, "base.safetensors", arch("sd1"), FloatFormat::F32, 5);
    let shapes = shapes_of(&base);
    let mut paths = Vec::new();
    let mut all_deltas = Vec::new();
    for n in 0..20u64 {
        let (tensors, deltas) = every_network(&shapes, 100 * n);
        all_deltas.push(deltas);
        let p = dir.path(&format!("l{n}.safetensors"));
        write_raw(&p, &tensors, &[], 0);
        paths.push(p);
    }
    let strength =
        |n: usize| 0.05 * (n as f64 + 1.0) * if n.is_multiple_of(3) { -1.0 } else { 1.0 };
    // One pass, f32 output.
    let mut binds = format!("M = \"{}\"\n", s(&base));
    let mut expr = "M".to_string();
    for (n, p) in paths.iter().enumerate() {
        binds.push_str(&format!("L{n} = \"{}\"\n", s(p)));
        expr.push_str(&format!(" + lora(L{n}) x {}", strength(n)));
    }
    let recipe = dir.path("all.recipe");
    std::fs::write(&recipe, format!("{binds}OUT = {expr}\n")).unwrap();
    let once = dir.path("once.safetensors");
    run_ok(&["merge", s(&recipe), "-o", s(&once), "-q", "--dtype", "f32"]);
    // Twenty passes, each baking one LoRA into the last one's f32 output.
    let mut prev = base.clone();
    for (n, p) in paths.iter().enumerate() {
        let r = dir.path(&format!("step{n}.recipe"));
        std::fs::write(
            &r,
            format!(
                "M = \"{}\"\nL = \"{}\"\nOUT = M + lora(L) x {}\n",
                s(&prev),
                s(p),
                strength(n)
            ),
        )
        .unwrap();
        let o = dir.path(&format!("step{n}.safetensors"));
        run_ok(&["merge", s(&r), "-o", s(&o), "-q", "--dtype", "f32"]);
        prev = o;
    }
    let (a, b) = (reference_map(&once), reference_map(&prev));
    let base_map = reference_map(&base);
    let mut patched = 0;
    for (key, t) in &a {
        let (Some(x), Some(y)) = (t.values.as_ref(), b[key].values.as_ref()) else {
            continue;
        };
        let m = base_map[key].values.clone().unwrap();
        for (i, (x, y)) in x.iter().zip(y).enumerate() {
            // Twenty f32 roundings against one, each at most an f32 step of the running
            // value, which never exceeds |model| + Σ|strength·ΔW|.
            let reach: f64 = m[i].abs()
                + all_deltas
                    .iter()
                    .enumerate()
                    .filter_map(|(n, ds)| {
                        ds.iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, d)| (strength(n) * d[i] as f64).abs())
                    })
                    .sum::<f64>();
            assert!(
                (x - y).abs() <= 21.0 * f32::EPSILON as f64 * reach,
                "{key}: {x} vs {y}"
            );
        }
        patched += usize::from(x != &base_map[key].values.clone().unwrap());
    }
    assert_eq!(
        patched, 4,
        "the four patched keys, and no other, differ from the model"
    );
}

#[test]
fn lora_bake_errors_name_the_file_and_the_fix() {
    let dir = Dir::new();
    let (sd1, tensors, _) = sd1_with_every_network(&dir, 1);
    let lora = dir.path("l.safetensors");
    write_raw(&lora, &tensors, &[], 0);
    // The same module names with factors of another width (a LoRA for a wider model).
    let wide = dir.path("wide.safetensors");
    let mut big: Vec<RawTensor> = Vec::new();
    for t in &tensors {
        let mut t = RawTensor {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            data: t.data.clone(),
        };
        if t.name.contains("to_q.lora_down") {
            t.shape[1] *= 2;
            t.data = [t.data.clone(), t.data.clone()].concat();
        }
        big.push(t);
    }
    write_raw(&wide, &big, &[], 0);
    let out = dir.path("o.safetensors");
    for (steps, want) in [
        (
            "OUT = M + L",
            "is a LoRA file, not a model: bake it with `lora(L)`",
        ),
        ("OUT = M + lora(M)", "is a checkpoint, not a LoRA file"),
        ("OUT = M + lora(W)", "do not fit the model"),
        ("OUT = M + lora(L, strength=(1,2,3))", "block weights given"),
    ] {
        let recipe = dir.path("r.recipe");
        std::fs::write(
            &recipe,
            format!(
                "M = \"{}\"\nL = \"{}\"\nW = \"{}\"\n{steps}\n",
                s(&sd1),
                s(&lora),
                s(&wide)
            ),
        )
        .unwrap();
        let (code, _, err) = run_code(&["merge", s(&recipe), "-o", s(&out), "-q"]);
        assert_ne!(code, 0, "{steps}");
        assert!(err.contains(want), "{steps}: {err}");
        assert!(!out.exists(), "{steps}");
    }
}

/// k orthonormal columns of length n (Gram-Schmidt on the LCG's noise), column-major.
fn orthonormal(n: usize, k: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for j in 0..k {
        let mut v: Vec<f64> = noise(seed + j as u64, n)
            .iter()
            .map(|x| *x as f64)
            .collect();
        for _ in 0..2 {
            for c in &cols {
                let d: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(c).for_each(|(a, b)| *a -= d * b);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        cols.push(v);
    }
    cols
}

/// A tuned SD1 (f32, 1/8 width) whose change from its base is planted: on IN04's to_q
/// ΔW = Σ σᵢ uᵢvᵢᵀ with σᵢ = 2·0.7ⁱ, on the text encoder a change below kohya's
/// `--min_diff`, nowhere else.
fn planted_pair(dir: &Dir) -> (std::path::PathBuf, std::path::PathBuf, Vec<f64>, String) {
    use ckpt_read::dtype::FloatFormat;
    let base = generated(dir, "base.safetensors", arch("sd1"), FloatFormat::F32, 9);
    let key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    let te = "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight";
    let tuned = dir.path("tuned.safetensors");
    let shapes = shapes_of(&base);
    let (m, n) = (shapes[key][0], shapes[key][1]);
    let k = m.min(n);
    let sigma: Vec<f64> = (0..k).map(|i| 2.0 * 0.7f64.powi(i as i32)).collect();
    let (u, v) = (orthonormal(m, k, 1000), orthonormal(n, k, 5000));
    rewrite(&base, &tuned, |ts| {
        for t in ts.iter_mut() {
            let add = |t: &mut RawTensor, f: &dyn Fn(usize, usize) -> f64| {
                let cols = t.shape[1];
                let mut vals: Vec<f32> = t
                    .data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                for (idx, x) in vals.iter_mut().enumerate() {
                    *x = (*x as f64 + f(idx / cols, idx % cols)) as f32;
                }
                t.data = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            };
            if t.name == key {
                add(t, &|i, j| {
                    (0..k).map(|r| sigma[r] * u[r][i] * v[r][j]).sum()
                });
            } else if t.name == te {
                add(t, &|i, j| if i == j { 0.004 } else { 0.0 });
            }
        }
    });
    (base, tuned, sigma, key.to_string())
}

#[test]
fn extract_keeps_the_eckart_young_optimum_and_bakes_back_to_it() {
    let dir = Dir::new();
    let (base, tuned, sigma, key) = planted_pair(&dir);
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let lora = dir.path("x.safetensors");
    let v = run_json(&words(
        "lora extract {} --base {} --rank 8 --clamp-quantile 1 --dtype f32 -o {} -q",
        &[s(&tuned), s(&base), s(&lora)],
    ));
    let stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let m = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["stem"] == stem)
        .unwrap_or_else(|| panic!("{v}"));
    let optimum: f64 = sigma[..8].iter().map(|s| s * s).sum::<f64>() / total;
    let got = m["retained"].as_f64().unwrap() / m["energy"].as_f64().unwrap();
    assert!(
        (got - optimum).abs() <= 1e-4 * optimum,
        "retained {got} vs Eckart-Young {optimum}"
    );
    assert!((m["energy"].as_f64().unwrap() - total).abs() <= 1e-5 * total);
    // The text encoder's change is below --min-diff: left out whole, as kohya does.
    assert_eq!(
        v["text_encoders_skipped"],
        serde_json::json!(["TE1"]),
        "{v}"
    );
    assert!(
        !v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["stem"].as_str().unwrap().starts_with("lora_te")),
    );
    // The file as loaders read it: kohya's names, rank 8, alpha 8, its metadata.
    let text = run_ok(&["inspect", s(&lora)]);
    assert!(text.contains("rank: 8 ("), "{text}");
    assert!(text.contains("ss_network_module: networks.lora"), "{text}");
    let (tensors, meta) = read_raw(&lora);
    assert!(
        tensors
            .iter()
            .any(|t| t.name == format!("{stem}.lora_up.weight") && t.shape == vec![80, 8])
    );
    assert!(
        meta.iter()
            .any(|(k, v)| k == "ss_base_model_version" && v == "sd_v1")
    );
    // bake(extract(T)) is as far from T as the optimum allows: ‖T − bake‖² = Σᵢ≥8 σᵢ².
    let recipe = dir.path("b.recipe");
    std::fs::write(
        &recipe,
        format!(
            "B = \"{}\"\nL = \"{}\"\nOUT = B + lora(L)\n",
            s(&base),
            s(&lora)
        ),
    )
    .unwrap();
    let baked = dir.path("baked.safetensors");
    run_ok(&["merge", s(&recipe), "-o", s(&baked), "-q", "--dtype", "f32"]);
    let (t, b) = (reference_map(&tuned), reference_map(&baked));
    let (tv, bv) = (
        t[&key].values.as_ref().unwrap(),
        b[&key].values.as_ref().unwrap(),
    );
    let resid: f64 = tv.iter().zip(bv).map(|(x, y)| (x - y) * (x - y)).sum();
    let tail: f64 = sigma[8..].iter().map(|s| s * s).sum();
    assert!(
        (resid - tail).abs() <= 1e-3 * tail,
        "‖T − bake‖² {resid} vs the optimum's {tail}"
    );
    // --rank auto: the smallest rank reaching 90% of the energy.
    let auto = dir.path("auto.safetensors");
    let v = run_json(&words(
        "lora extract {} --base {} --rank auto --energy 0.9 -o {} -q",
        &[s(&tuned), s(&base), s(&auto)],
    ));
    let mut acc = 0.0;
    let want = sigma
        .iter()
        .position(|x| {
            acc += x * x;
            acc >= 0.9 * total
        })
        .unwrap()
        + 1;
    let m = find_row(&v["modules"], "stem", &stem);
    assert_eq!(m["rank"].as_u64().unwrap() as usize, want, "{m}");
}

/// A low-rank module under any dialect's suffixes: its tensors, and ΔW = s·up·down
/// materialised in f32 (s = alpha/rank, or 1 without alpha).
#[allow(clippy::too_many_arguments)]
fn low_rank(
    stem: &str,
    (down_sfx, up_sfx): (&str, &str),
    rank: usize,
    rows: usize,
    cols: usize,
    seed: u64,
    alpha: Option<f32>,
) -> (Vec<RawTensor>, Vec<f32>) {
    let (td, d) = f16_tensor(format!("{stem}{down_sfx}"), vec![rank, cols], seed, 1.0);
    let (tu, u) = f16_tensor(format!("{stem}{up_sfx}"), vec![rows, rank], seed + 1, 1.0);
    let mut ts = vec![td, tu];
    if let Some(a) = alpha {
        ts.push(alpha_tensor(stem, a));
    }
    let s = alpha.map_or(1.0, |a| a / rank as f32);
    let w = matmul(&u, &d, rows, rank, cols);
    (ts, w.iter().map(|x| x * s).collect())
}

const KOHYA: (&str, &str) = (".lora_down.weight", ".lora_up.weight");
const PEFT: (&str, &str) = (".lora_A.weight", ".lora_B.weight");
const XLABS: (&str, &str) = (".down.weight", ".up.weight");

/// A module to bake: stem, suffixes, the key it patches, its rows in a key of a shape.
type Planted<'a> = (
    &'a str,
    (&'a str, &'a str),
    &'a str,
    fn(&[usize]) -> (usize, usize),
);

/// Bakes `modules` (stem, suffixes, the key, its rows as a rule of the naming convention)
/// into `base` and checks each patched row range against model + ΔW, every other row and
/// key unchanged.
fn bake_and_check(dir: &Dir, base: &std::path::Path, modules: &[Planted<'_>]) -> serde_json::Value {
    let shapes = shapes_of(base);
    let mut tensors = Vec::new();
    let mut want: Vec<(String, (usize, usize), Vec<f32>)> = Vec::new();
    for (i, (stem, sfx, key, rows)) in modules.iter().enumerate() {
        let shape = &shapes[*key];
        let (lo, hi) = rows(shape);
        let cols: usize = shape[1..].iter().product();
        let (ts, d) = low_rank(
            stem,
            *sfx,
            2 + i % 3,
            hi - lo,
            cols,
            7 * i as u64 + 3,
            Some(1.5),
        );
        tensors.extend(ts);
        want.push((key.to_string(), (lo, hi), d));
    }
    let lora = dir.path("dialects.safetensors");
    write_raw(&lora, &tensors, &[], 0);
    let recipe = dir.path("d.recipe");
    std::fs::write(
        &recipe,
        format!(
            "M = \"{}\"\nL = \"{}\"\nOUT = M + lora(L)\n",
            s(base),
            s(&lora)
        ),
    )
    .unwrap();
    let out = dir.path("d.safetensors");
    run_ok(&["merge", s(&recipe), "-o", s(&out), "-q", "--dtype", "f32"]);
    let (m, g) = (reference_map(base), reference_map(&out));
    for (key, t) in &m {
        let (Some(mv), Some(gv)) = (t.values.as_ref(), g[key].values.as_ref()) else {
            continue;
        };
        let cols: usize = t.shape.iter().skip(1).product();
        let mut expect = mv.clone();
        for (k, (lo, _), d) in want.iter().filter(|(k, _, _)| k == key) {
            let _ = k;
            for (idx, dv) in d.iter().enumerate() {
                expect[lo * cols + idx] += *dv as f64;
            }
        }
        for (idx, (e, x)) in expect.iter().zip(gv).enumerate() {
            assert!(
                (e - x).abs() <= 1e-6 * e.abs().max(1.0),
                "{key}[{idx}] (row {}): {x} vs {e}",
                idx / cols.max(1)
            );
        }
    }
    run_json(&["inspect", s(&lora)])
}

fn third(i: usize) -> impl Fn(&[usize]) -> (usize, usize) {
    move |s: &[usize]| (i * s[0] / 3, (i + 1) * s[0] / 3)
}

/// Flux's three dialects, by their naming rules: kohya writes BFL's block paths with `_`
/// (`lora_unet_double_blocks_3_img_mlp_0`); diffusers/ai-toolkit split the fused
/// projections (`transformer_blocks.N.attn.to_k` is the second third of
/// `double_blocks.N.img_attn.qkv`; a single block's `attn.to_v` and `proj_mlp` are rows
/// 2h..3h and 3h.. of `linear1`, h its input width: diffusers' `_convert_sd_scripts_to_ai_toolkit`
/// dims [3072, 3072, 3072, 12288]); XLabs names a double block's `processor.proj_lora2` for
/// `txt_attn.proj`. Baked into a generated Flux at 1/32 width, each patches its rows.
#[test]
fn flux_dialects_patch_their_rows() {
    use ckpt_core::catalog::Component;
    use ckpt_ops::synth::Synthetic;
    use ckpt_read::dtype::FloatFormat;
    let dir = Dir::new();
    let mut l = layout(arch("flux"), 32, FloatFormat::F32);
    l.components = vec![Component::named("diffuser").unwrap()];
    let base = dir.model("flux.safetensors", &l, &Synthetic::base(arch("flux"), 2));
    let d = |k: &str| format!("model.diffusion_model.{k}.weight");
    let (qkv0, lin1, proj2, mlp3) = (
        d("double_blocks.0.img_attn.qkv"),
        d("single_blocks.1.linear1"),
        d("double_blocks.2.txt_attn.proj"),
        d("double_blocks.3.img_mlp.0"),
    );
    let whole: fn(&[usize]) -> (usize, usize) = |s| (0, s[0]);
    let to_k: fn(&[usize]) -> (usize, usize) = |s| third(1)(s);
    let to_v: fn(&[usize]) -> (usize, usize) = |s| (2 * s[1], 3 * s[1]);
    let mlp: fn(&[usize]) -> (usize, usize) = |s| (3 * s[1], s[0]);
    let v = bake_and_check(
        &dir,
        &base,
        &[
            (
                "transformer.transformer_blocks.0.attn.to_k",
                PEFT,
                &qkv0,
                to_k,
            ),
            (
                "transformer.single_transformer_blocks.1.attn.to_v",
                PEFT,
                &lin1,
                to_v,
            ),
            (
                "transformer.single_transformer_blocks.1.proj_mlp",
                PEFT,
                &lin1,
                mlp,
            ),
            ("double_blocks.2.processor.proj_lora2", XLABS, &proj2, whole),
            ("lora_unet_double_blocks_3_img_mlp_0", KOHYA, &mlp3, whole),
        ],
    );
    assert!(
        v["arch"].as_str().unwrap().contains("flux") || v["arch"] == "Flux",
        "{v}"
    );
    for m in v["modules"].as_array().unwrap() {
        let key = m["target"].as_str().unwrap_or_else(|| panic!("{m}"));
        assert_eq!(
            m["block"].as_str(),
            reference_dit_block(key, true).as_deref(),
            "{m}"
        );
    }
}

/// OpenCLIP towers (SD2's `lora_te_`, SDXL's `lora_te2_`) fuse HF's q/k/v into
/// `attn.in_proj_weight`, rows q, k, v (diffusers' convert_diffusers_to_original_stable_diffusion
/// stacks them in that order), and rename `mlp.fc1` to `mlp.c_fc`. Baked into a generated SD2,
/// the k module patches the middle third; PEFT's dotted names map like kohya's.
#[test]
fn openclip_modules_patch_thirds_of_in_proj() {
    use ckpt_read::dtype::FloatFormat;
    let dir = Dir::new();
    let base = generated(&dir, "sd2.safetensors", arch("sd2"), FloatFormat::F32, 4);
    let in_proj = "cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight";
    let c_fc = "cond_stage_model.model.transformer.resblocks.2.mlp.c_fc.weight";
    let attn = "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn2.to_v.weight";
    let whole: fn(&[usize]) -> (usize, usize) = |s| (0, s[0]);
    let k_third: fn(&[usize]) -> (usize, usize) = |s| third(1)(s);
    let q_third: fn(&[usize]) -> (usize, usize) = |s| third(0)(s);
    let v = bake_and_check(
        &dir,
        &base,
        &[
            (
                "lora_te_text_model_encoder_layers_5_self_attn_k_proj",
                KOHYA,
                in_proj,
                k_third,
            ),
            (
                "text_encoder.text_model.encoder.layers.5.self_attn.q_proj",
                PEFT,
                in_proj,
                q_third,
            ),
            (
                "lora_te_text_model_encoder_layers_2_mlp_fc1",
                KOHYA,
                c_fc,
                whole,
            ),
            // up_blocks.1.attentions.2 is output_blocks.5.1 (levels of three, attentions at 1).
            (
                "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v",
                PEFT,
                attn,
                whole,
            ),
        ],
    );
    assert_eq!(v["unknown"], serde_json::json!([]), "{v}");
    // SDXL's second encoder by the same rule, read by inspect.
    let sdxl = [
        (
            "lora_te2_text_model_encoder_layers_7_self_attn_v_proj",
            "conditioner.embedders.1.model.transformer.resblocks.7.attn.in_proj_weight",
            "TE2",
        ),
        (
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc2",
            "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight",
            "TE2",
        ),
        (
            "unet.down_blocks.2.attentions.1.transformer_blocks.3.attn1.to_q",
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.3.attn1.to_q.weight",
            "IN08",
        ),
    ];
    let mut ts = Vec::new();
    for (i, (stem, _, _)) in sdxl.iter().enumerate() {
        let sfx = if stem.starts_with("lora_") {
            KOHYA
        } else {
            PEFT
        };
        ts.extend(low_rank(stem, sfx, 2, 8, 8, i as u64, None).0);
    }
    let p = dir.path("sdxl.safetensors");
    write_raw(&p, &ts, &[], 0);
    let v = run_json(&["inspect", s(&p)]);
    for (stem, key, block) in sdxl {
        let m = v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["stem"] == stem)
            .unwrap_or_else(|| panic!("{stem}: {v}"));
        assert_eq!(m["target"], key, "{stem}");
        assert_eq!(m["block"], block, "{stem}");
    }
    let v_mod = find_row(&v["modules"], "stem", &sdxl[0].0);
    assert_eq!(v_mod["rows"], serde_json::json!({"Third": 2}));
}

/// Every low-rank module of a LoRA file materialised from its raw tensors (kohya or PEFT
/// suffixes; scale α/r, 1 without α): stem → (rows, cols, ΔW).
fn materialise(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (usize, usize, Vec<f64>)> {
    let (tensors, _) = read_raw(path);
    let vals = |t: &RawTensor| -> Vec<f64> {
        match t.dtype.as_str() {
            "F32" => t
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            "F16" => t
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            d => panic!("{d}"),
        }
    };
    let mut out = std::collections::BTreeMap::new();
    for (down_sfx, up_sfx) in [KOHYA, PEFT] {
        for d in tensors.iter().filter(|t| t.name.ends_with(down_sfx)) {
            let stem = &d.name[..d.name.len() - down_sfx.len()];
            let u = tensors
                .iter()
                .find(|t| t.name == format!("{stem}{up_sfx}"))
                .unwrap();
            let r = d.shape[0];
            let cols: usize = d.shape[1..].iter().product();
            let rows = u.shape[0];
            let s = tensors
                .iter()
                .find(|t| t.name == format!("{stem}.alpha"))
                .map_or(1.0, |a| vals(a)[0] / r as f64);
            let (dv, uv) = (vals(d), vals(u));
            let mut w = vec![0.0; rows * cols];
            for o in 0..rows {
                for j in 0..cols {
                    w[o * cols + j] = s
                        * (0..r)
                            .map(|k| uv[o * r + k] * dv[k * cols + j])
                            .sum::<f64>();
                }
            }
            out.insert(stem.to_string(), (rows, cols, w));
        }
    }
    out
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * scale)
}

#[test]
fn lora_merge_concat_is_exact_and_svd_re_ranks_the_sum() {
    let dir = Dir::new();
    let q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_1_conv1";
    let mk = |name: &str, ls: &[Lora]| lora_file(&dir, name, ls);
    let a = [
        Lora::new(q, [4, 40, 40, 0], 2.0, 1),
        Lora::new(conv, [2, 20, 20, 3], 1.0, 3),
    ];
    let b = [Lora::new(q, [8, 40, 40, 0], 1.0, 5)];
    let (pa, pb) = (mk("a.safetensors", &a), mk("b.safetensors", &b));
    let want_q: Vec<f64> = a[0]
        .delta()
        .iter()
        .zip(b[0].delta())
        .map(|(x, y)| 0.7 * x - 0.5 * y)
        .collect();
    let want_conv: Vec<f64> = a[1].delta().iter().map(|x| 0.7 * x).collect();
    let cat = dir.path("cat.safetensors");
    let arg = |p: &std::path::Path, r: &str| format!("{}:{r}", s(p));
    run_ok(&words(
        "lora merge {} {} --concat --dtype f32 -o {} -q",
        &[&arg(&pa, "0.7"), &arg(&pb, "-0.5"), s(&cat)],
    ));
    let got = materialise(&cat);
    assert!(close(&got[q].2, &want_q, 1e-6), "concat: {q}");
    assert!(close(&got[conv].2, &want_conv, 1e-6), "concat: {conv}");
    // Ranks add up: 4 + 8.
    let (ts, _) = read_raw(&cat);
    let down = ts
        .iter()
        .find(|t| t.name == format!("{q}.lora_down.weight"))
        .unwrap();
    assert_eq!(down.shape, vec![12, 40]);
    let conv_down = ts
        .iter()
        .find(|t| t.name == format!("{conv}.lora_down.weight"))
        .unwrap();
    assert_eq!(
        conv_down.shape,
        vec![2, 20, 3, 3],
        "a LoCon stays a 3x3 convolution"
    );
    // Re-ranked at a rank holding the whole sum (4 + 8): the same change.
    let svd = dir.path("svd.safetensors");
    run_ok(&words(
        "lora merge {} {} --rank 12 --clamp-quantile 1 --dtype f32 -o {} -q",
        &[&arg(&pa, "0.7"), &arg(&pb, "-0.5"), s(&svd)],
    ));
    let got = materialise(&svd);
    assert!(close(&got[q].2, &want_q, 1e-5), "svd: {q}");
    // At rank 2 it is the sum's best rank-2 approximation: its residual is what the sum's
    // singular values beyond 2 hold, ‖S‖² − ‖S₂‖², checked against a rank-12 fit's energy.
    let r2 = dir.path("r2.safetensors");
    run_ok(&words(
        "lora merge {} {} --rank 2 --clamp-quantile 1 --dtype f32 -o {} -q",
        &[&arg(&pa, "0.7"), &arg(&pb, "-0.5"), s(&r2)],
    ));
    let got2 = materialise(&r2);
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    // Best approximation ⇔ the residual is orthogonal to it.
    let resid: Vec<f64> = want_q.iter().zip(&got2[q].2).map(|(x, y)| x - y).collect();
    assert!(dot(&resid, &got2[q].2).abs() <= 1e-5 * dot(&want_q, &want_q));
    // A LoRA and a checkpoint are not merged.
    let (code, _, err) = run_code(&words(
        "lora merge {} --concat -o {} {}",
        &[
            s(&pa),
            s(&dir.path("x.safetensors")),
            s(&dir.path("none.safetensors")),
        ],
    ));
    assert_ne!(code, 0, "{err}");
}

/// `lora merge --method ties` (several LoRAs into one by TIES, ComfyUI-Manager #2440): each
/// module's changes ratio·ΔWᵢ trimmed to their top k by magnitude, the sign elected by the sum,
/// the agreeing ones averaged, then re-ranked by SVD; against that computed element by element
/// here. A module in one LoRA only is its own top k. Unknown methods and options are refused.
#[test]
fn lora_merge_by_ties_equals_a_per_element_reference() {
    let dir = Dir::new();
    let q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let k = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k";
    let mk = |name: &str, ls: &[Lora]| lora_file(&dir, name, ls);
    let a = [
        Lora::new(q, [4, 40, 40, 0], 2.0, 11),
        Lora::new(k, [4, 40, 40, 0], 4.0, 12),
    ];
    let b = [Lora::new(q, [8, 40, 40, 0], 1.0, 13)];
    let c = [Lora::new(q, [2, 40, 40, 0], 2.0, 14)];
    let (pa, pb, pc) = (
        mk("a.safetensors", &a),
        mk("b.safetensors", &b),
        mk("c.safetensors", &c),
    );
    let frac = 0.3;
    // TIES by hand: the top ⌈k·n⌉ of each change by magnitude (ties at the threshold kept),
    // the elected sign of Σ changes (0 counts as +), the mean of the agreeing non-zero ones.
    let top = |d: &[f64]| -> Vec<f64> {
        let mut mags: Vec<f32> = d.iter().map(|x| x.abs() as f32).collect();
        mags.sort_by(|x, y| y.total_cmp(x));
        let th = mags[((frac * d.len() as f64).ceil() as usize).max(1) - 1];
        d.iter()
            .map(|&x| if (x.abs() as f32) < th { 0.0 } else { x })
            .collect()
    };
    let ties = |changes: &[Vec<f64>]| -> Vec<f64> {
        let kept: Vec<Vec<f64>> = changes.iter().map(|d| top(d)).collect();
        (0..kept[0].len())
            .map(|j| {
                let sum: f64 = kept.iter().map(|d| d[j]).sum();
                let sign = if sum >= 0.0 { 1.0 } else { -1.0 };
                let agree: Vec<f64> = kept
                    .iter()
                    .map(|d| d[j])
                    .filter(|x| *x != 0.0 && x.signum() == sign)
                    .collect();
                if agree.is_empty() {
                    0.0
                } else {
                    agree.iter().sum::<f64>() / agree.len() as f64
                }
            })
            .collect()
    };
    let scaled = |l: &Lora, r: f64| l.delta().iter().map(|x| r * x).collect::<Vec<f64>>();
    let want_q = ties(&[scaled(&a[0], 0.7), scaled(&b[0], -0.5), scaled(&c[0], 1.0)]);
    let want_k = ties(&[scaled(&a[1], 0.7)]);
    let out = dir.path("ties.safetensors");
    let arg = |p: &std::path::Path, r: &str| format!("{}:{r}", s(p));
    run_ok(&words(
        "lora merge {} {} {} --rank 40 --method ties --opt k=0.3 --clamp-quantile 1 --dtype f32 -o {} -q",
        &[&arg(&pa, "0.7"), &arg(&pb, "-0.5"), s(&pc), s(&out)],
    ));
    let got = materialise(&out);
    assert!(close(&got[q].2, &want_q, 1e-5), "ties: {q}");
    assert!(close(&got[k].2, &want_k, 1e-5), "ties: {k}");
    // Not the sum: TIES changed something.
    let sum: Vec<f64> = scaled(&a[0], 0.7)
        .iter()
        .zip(scaled(&b[0], -0.5))
        .zip(scaled(&c[0], 1.0))
        .map(|((x, y), z)| x + y + z)
        .collect();
    assert!(!close(&got[q].2, &sum, 1e-3));
    for (args, says) in [
        ("--method mean", "not a method for LoRA changes"),
        ("--method ties --opt kk=1", "has no option `kk`"),
        ("--method ties --opt k=2", "must be in (0, 1]"),
        (
            "--method ties --opt weights=1",
            "not an option of `lora merge`",
        ),
    ] {
        let x = dir.path("x.safetensors");
        let mut cmd = words("lora merge {} --rank 4 -o {}", &[s(&pa), s(&x)]);
        cmd.extend(args.split(' '));
        let (code, _, err) = run_code(&cmd);
        assert_eq!(code, 2, "{args}: {err}");
        assert!(err.contains(says), "{args}: {err}");
    }
}

/// kohya's Flux module for the fused `img_attn.qkv` becomes diffusers' three (`to_q`, `to_k`,
/// `to_v`: the down factor shared, the up factor cut by rows, as diffusers' converter does)
/// and back into one; the change stays the same throughout.
#[test]
fn lora_convert_splits_and_fuses_flux_projections() {
    let dir = Dir::new();
    let fused = "lora_unet_double_blocks_0_img_attn_qkv";
    let (ts, d) = low_rank(fused, KOHYA, 4, 9216, 3072 / 32, 11, Some(2.0));
    // A narrow input width keeps the file small; the rows are Flux's 3 × 3072.
    let (ts2, d2) = low_rank(
        "lora_unet_single_blocks_2_linear2",
        KOHYA,
        2,
        3072,
        64,
        13,
        None,
    );
    let src = dir.path("kohya.safetensors");
    write_raw(&src, &[ts, ts2].concat(), &[], 0);
    let peft = dir.path("peft.safetensors");
    let out = run_ok(&words(
        "lora convert {} --to peft --dtype f32 -o {} -q",
        &[s(&src), s(&peft)],
    ));
    let got = materialise(&peft);
    for (i, part) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        let stem = format!("transformer.transformer_blocks.0.attn.{part}");
        let (rows, cols, w) = got.get(&stem).unwrap_or_else(|| panic!("{stem}: {out}"));
        assert_eq!((*rows, *cols), (3072, 96));
        let want: Vec<f64> = d[i * 3072 * 96..(i + 1) * 3072 * 96]
            .iter()
            .map(|x| *x as f64)
            .collect();
        assert!(close(w, &want, 1e-6), "{stem}");
    }
    let d2: Vec<f64> = d2.iter().map(|x| *x as f64).collect();
    assert!(close(
        &got["transformer.single_transformer_blocks.2.proj_out"].2,
        &d2,
        1e-6
    ));
    let back = dir.path("back.safetensors");
    run_ok(&words(
        "lora convert {} --to kohya --dtype f32 -o {} -q",
        &[s(&peft), s(&back)],
    ));
    let got = materialise(&back);
    let d: Vec<f64> = d.iter().map(|x| *x as f64).collect();
    assert!(close(&got[fused].2, &d, 1e-6), "fused again");
    let (ts, _) = read_raw(&back);
    let down = ts
        .iter()
        .find(|t| t.name == format!("{fused}.lora_down.weight"))
        .unwrap();
    assert_eq!(
        down.shape,
        vec![12, 96],
        "three rank-4 slices make one rank-12 module"
    );
}

/// A LoRA against a checkpoint's change from its base, and LoRAs' `l2`, both against the
/// materialised matrices: cosine = ⟨ΔW, T − B⟩ / (‖ΔW‖·‖T − B‖) over the keys the LoRA patches,
/// ‖ΔW‖ per block, ‖ΔW_a − ΔW_b‖.
#[test]
fn lora_against_a_checkpoint_delta_and_l2_of_loras() {
    use ckpt_read::dtype::FloatFormat;
    let dir = Dir::new();
    let base = generated(&dir, "b.safetensors", arch("sd1"), FloatFormat::F32, 6);
    let shapes = shapes_of(&base);
    let q_key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    let c_key = "model.diffusion_model.input_blocks.2.0.in_layers.2.weight";
    let q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let conv = "lora_unet_down_blocks_0_resnets_1_conv1";
    let (qo, qi) = (shapes[q_key][0], shapes[q_key][1]);
    let (co, ci) = (shapes[c_key][0], shapes[c_key][1]);
    let la = [
        Lora::new(q, [4, qi, qo, 0], 2.0, 21),
        Lora::new(conv, [2, ci, co, 3], 1.0, 23),
    ];
    let lb = [Lora::new(q, [2, qi, qo, 0], 2.0, 25)];
    let mk = |name: &str, ls: &[Lora]| lora_file(&dir, name, ls);
    let (pa, pb) = (mk("la.safetensors", &la), mk("lb.safetensors", &lb));
    // The tuned model: twice A's change on to_q, noise on the conv, noise elsewhere too
    // (outside the LoRA's keys, so outside the comparison).
    let tuned = dir.path("t.safetensors");
    let dq = la[0].delta();
    rewrite(&base, &tuned, |ts| {
        for t in ts.iter_mut() {
            if t.dtype != "F32" {
                continue;
            }
            let mut v: Vec<f32> = t
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let extra = noise(t.name.len() as u64, v.len());
            for (i, x) in v.iter_mut().enumerate() {
                *x += if t.name == q_key {
                    2.0 * dq[i] as f32
                } else {
                    0.01 * extra[i]
                };
            }
            t.data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    });
    let (bm, tm) = (reference_map(&base), reference_map(&tuned));
    let change = |k: &str| -> Vec<f64> {
        let (b, t) = (
            bm[k].values.as_ref().unwrap(),
            tm[k].values.as_ref().unwrap(),
        );
        t.iter().zip(b).map(|(x, y)| x - y).collect()
    };
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let v = run_json(&["sim", s(&pa), s(&tuned), "--base", s(&base)]);
    for (block, key, l) in [("IN04", q_key, &la[0]), ("IN02", c_key, &la[1])] {
        let (d, c) = (l.delta(), change(key));
        let want = dot(&d, &c) / (dot(&d, &d) * dot(&c, &c)).sqrt();
        let row = find_row(&v["rows"], "block", &block);
        let got = row["cosine"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-9, "{block}: {got} vs {want}");
    }
    let in04 = find_row(&v["rows"], "block", "IN04");
    assert!(in04["cosine"].as_f64().unwrap() > 0.999_999);
    let (code, _, err) = run_code(&["sim", s(&pa), s(&tuned)]);
    assert_ne!(code, 0);
    assert!(err.contains("--base"), "{err}");
    // l2 of two LoRAs.
    let v = run_json(&["l2", "--base", s(&base), s(&pa), s(&pb)]);
    let (da, db) = (la[0].delta(), lb[0].delta());
    let rows = v["rows"].as_array().unwrap();
    let in04 = rows.iter().find(|r| r[0] == "IN04").unwrap();
    assert!(
        (in04[1][0].as_f64().unwrap() - dot(&da, &da).sqrt()).abs() <= 1e-9 * dot(&da, &da).sqrt()
    );
    assert!(
        (in04[1][1].as_f64().unwrap() - dot(&db, &db).sqrt()).abs() <= 1e-9 * dot(&db, &db).sqrt()
    );
    let dc = la[1].delta();
    let diff: f64 = da
        .iter()
        .zip(&db)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        + dot(&dc, &dc);
    let got = v["pairwise"][0][1].as_f64().unwrap();
    assert!(
        (got - diff.sqrt()).abs() <= 1e-9 * diff.sqrt(),
        "{got} vs {}",
        diff.sqrt()
    );
}

/// LoHa and LoKr modules have no low-rank factors: a conversion and a concatenating merge
/// list them as not written, with the option that writes them (a re-ranking merge), and
/// write the LoRA and LoCon modules.
#[test]
fn modules_without_low_rank_factors_are_listed_with_the_option_that_writes_them() {
    let dir = Dir::new();
    let (_, tensors, _) = sd1_with_every_network(&dir, 41);
    let lora = dir.path("every.safetensors");
    write_raw(&lora, &tensors, &[], 0);
    let not_written = |args: &[&str]| -> Vec<(String, String)> {
        let v = run_json(args);
        assert_eq!(
            v["modules"], 2,
            "the LoRA and the LoCon module are written: {v}"
        );
        v["not_written"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_string(),
                    p[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (loha, lokr) = (
        "lora_unet_up_blocks_3_attentions_2_proj_out",
        "lora_te_text_model_encoder_layers_11_self_attn_v_proj",
    );
    let peft = dir.path("peft.safetensors");
    let convert = ["lora", "convert", s(&lora), "--to", "peft", "-o", s(&peft)];
    let got = not_written(&[&convert[..], &["-q"]].concat());
    assert_eq!(
        got,
        // In the file's (sorted) module order.
        vec![
            (
                lokr.to_string(),
                "LoKr modules are written only by `lora merge --rank` (as LoRA)".to_string()
            ),
            (
                loha.to_string(),
                "LoHa modules are written only by `lora merge --rank` (as LoRA)".to_string()
            ),
        ]
    );
    let merged = dir.path("merged.safetensors");
    let merge = ["lora", "merge", s(&lora), "--concat", "-o", s(&merged)];
    let got = not_written(&[&merge[..], &["-q"]].concat());
    let why =
        |kind: &str| format!("a {kind} module has no factors to concatenate: merge with --rank");
    assert_eq!(
        got,
        vec![
            (lokr.to_string(), why("LoKr")),
            (loha.to_string(), why("LoHa"))
        ]
    );
}
