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
            let m = Lora {
                stem,
                rank: 4 + 4 * (i % 2),
                inp: 8,
                out: 8,
                kernel,
                alpha: 2.0,
                seed: i as u64,
            };
            tensors.extend(m.tensors());
        }
        let unknown = Lora {
            stem: "lora_unet_not_a_layer_of_any_model",
            rank: 4,
            inp: 8,
            out: 8,
            kernel: 0,
            alpha: 4.0,
            seed: 99,
        };
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

impl Lora {
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
        Lora {
            stem: q,
            rank: 4,
            inp: 40,
            out: 40,
            kernel: 0,
            alpha: 2.0,
            seed: 1,
        },
        Lora {
            stem: k,
            rank: 4,
            inp: 48,
            out: 40,
            kernel: 0,
            alpha: 4.0,
            seed: 3,
        },
        Lora {
            stem: conv,
            rank: 2,
            inp: 20,
            out: 20,
            kernel: 3,
            alpha: 1.0,
            seed: 5,
        },
        Lora {
            stem: te,
            rank: 8,
            inp: 48,
            out: 48,
            kernel: 0,
            alpha: 8.0,
            seed: 7,
        },
    ];
    // Other ranks and alphas; `to_k` only in A; the TE module shares A's factors exactly.
    let b = [
        Lora {
            stem: q,
            rank: 8,
            inp: 40,
            out: 40,
            kernel: 0,
            alpha: 1.0,
            seed: 11,
        },
        Lora {
            stem: conv,
            rank: 3,
            inp: 20,
            out: 20,
            kernel: 3,
            alpha: 3.0,
            seed: 13,
        },
        Lora {
            stem: te,
            rank: 8,
            inp: 48,
            out: 48,
            kernel: 0,
            alpha: 4.0,
            seed: 7,
        },
    ];
    let dir = Dir::new();
    let write = |name: &str, ls: &[Lora]| {
        let p = dir.path(name);
        let ts: Vec<RawTensor> = ls.iter().flat_map(Lora::tensors).collect();
        write_raw(&p, &ts, &[], 0);
        p
    };
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
    let te_row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["block"] == "TE1")
        .unwrap();
    assert!((te_row["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    let (code, _, err) = run_code(&["sim", s(&pa), s(&dir.path("missing.safetensors"))]);
    assert_ne!(code, 0, "{err}");
}
