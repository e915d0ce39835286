//! Recipes for many models: component-wise steps (`{UNET: ..., TE1: ..., VAE: ...}`) and
//! model lists (`glob(...)`, `list(...)`), checked against per-element references of each
//! component's merge.

use ckpt_diff::catalog::Arch;

use crate::merge::{check, family, merged, ties_reference};
use crate::util::*;

/// SDXL's components by key prefix (the checkpoint layout's fact, not the catalog's).
fn component(key: &str) -> &'static str {
    if key.starts_with("model.diffusion_model.") {
        "unet"
    } else if key.starts_with("conditioner.embedders.0.") {
        "te1"
    } else if key.starts_with("conditioner.embedders.1.") {
        "te2"
    } else if key.starts_with("first_stage_model.") {
        "vae"
    } else {
        "other"
    }
}

#[test]
fn a_component_wise_recipe_equals_each_components_merge() {
    let fam = family(Arch::Sdxl);
    std::fs::write(
        fam.dir.path("clips.txt"),
        "# TE1 donors\nft1.safetensors\n\nft2.safetensors\n",
    )
    .unwrap();
    let got = merged(
        &fam,
        "fts = glob(\"ft*.safetensors\")\n\
         clips = list(\"clips.txt\")\n\
         OUT = {UNET: avg(fts), TE1: ties(B, clips, k=0.5), TE2: F3, VAE: B}\n",
        &[],
    );
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    check(&fam, &got, |key, x| {
        seen.borrow_mut().insert(component(key));
        match component(key) {
            "unet" => (0..x[0].len())
                .map(|i| (x[1][i] + x[2][i] + x[3][i]) / 3.0)
                .collect(),
            "te1" => ties_reference(&x[..3], 0.5, &[1.0, 1.0], 1.0),
            "te2" => x[3].to_vec(),
            "vae" => x[0].to_vec(),
            other => panic!("{key} is in no component ({other})"),
        }
    });
    assert_eq!(seen.borrow().len(), 4, "components checked: {seen:?}");
}

#[test]
fn recipe_lists_and_components_report_their_mistakes() {
    let fam = family(Arch::Sd1);
    let binds = format!("B = \"{}\"\nF1 = \"{}\"\n", s(&fam.base), s(&fam.fts[0]));
    for (steps, want) in [
        (
            "OUT = {UNET: F1, OUT06..OUT11: B, TE: B}\n",
            "OUT06 is given by both `UNET` and `OUT06..OUT11`",
        ),
        (
            "xs = glob(\"nothing-*.safetensors\")\nOUT = avg(xs)\n",
            "'xs' is empty: the pattern 'nothing-*.safetensors' matches no file",
        ),
        (
            "xs = glob(\"ft*.safetensors\")\nOUT = xs x 0.5 + B x 0.5\n",
            "'xs' is a list of 3 models: use it as a call's argument",
        ),
        (
            "xs = list(\"missing.txt\")\nOUT = avg(xs)\n",
            "cannot read the model list",
        ),
        ("OUT = {UNET: F1, WHAT: B}\n", "WHAT"),
    ] {
        let recipe = fam.dir.path("bad.recipe");
        std::fs::write(&recipe, format!("{binds}{steps}")).unwrap();
        let out = fam.dir.path("bad.safetensors");
        let (code, _, err) = run_code(&["merge", s(&recipe), "-o", s(&out), "-q"]);
        assert_ne!(code, 0, "{steps}");
        assert!(err.contains(want), "{steps}: {err}");
        assert!(!out.exists(), "{steps}");
    }
}
