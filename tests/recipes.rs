//! Recipes for many models: component-wise steps (`{UNET: ..., TE1: ..., VAE: ...}`) and
//! model lists (`glob(...)`, `list(...)`), checked against per-element references of each
//! component's merge.

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
    let fam = family(arch("sdxl"));
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
    let fam = family(arch("sd1"));
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

/// `--dry-run` reports every problem of every input at once (a missing file, a truncated
/// one, another architecture, an output that exists), exits non-zero and writes nothing;
/// keys missing from one input are listed as copied.
#[test]
fn dry_run_reports_every_input_problem_at_once() {
    let fam = family(arch("sd1"));
    let xl = family(arch("sdxl"));
    let cut = fam.dir.path("cut.safetensors");
    let bytes = std::fs::read(&fam.fts[1]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let lacking = fam.dir.path("lacking.safetensors");
    rewrite(&fam.fts[2], &lacking, |ts| {
        ts.retain(|t| !t.name.contains("output_blocks.11.1.proj_out"))
    });
    let out = fam.dir.path("exists.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    let recipe = fam.dir.path("r.recipe");
    let good = format!(
        "B = \"{}\"\nF1 = \"{}\"\nL = \"{}\"\nOUT = ties(B, F1, L)\n",
        s(&fam.base),
        s(&fam.fts[0]),
        s(&lacking)
    );
    std::fs::write(
        &recipe,
        format!(
            "B = \"{}\"\nF1 = \"{}\"\nGONE = \"{}\"\nCUT = \"{}\"\nXL = \"{}\"\nOUT = avg(B, F1, GONE, CUT, XL)\n",
            s(&fam.base),
            s(&fam.fts[0]),
            s(&fam.dir.path("gone.safetensors")),
            s(&cut),
            s(&xl.fts[0])
        ),
    )
    .unwrap();
    let (code, stdout, err) = run_code(&["merge", s(&recipe), "-o", s(&out), "--dry-run"]);
    assert_ne!(code, 0);
    for want in [
        "4 problems found before reading any tensor data",
        "exists.safetensors' exists: pass --force",
        "'GONE'",
        "No such file",
        "'CUT'",
        "truncated",
        "B, F1 are SD1 (LDM) at 1/16 width; XL is SDXL base (SGM) at 1/32 width",
    ] {
        assert!(err.contains(want), "missing '{want}' in:\n{err}");
    }
    assert!(stdout.contains("problem: "), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    // A plan that can run: every component, the keys one input lacks, and JSON.
    std::fs::write(&recipe, good).unwrap();
    let fresh = fam.dir.path("fresh.safetensors");
    let plan = run_json(&["merge", s(&recipe), "-o", s(&fresh), "--dry-run"]);
    assert!(!fresh.exists(), "a dry run wrote its output");
    let comps: Vec<&str> = column(&plan["components"], "component");
    assert_eq!(comps, ["UNET", "TE1", "VAE"], "{plan}");
    let copied = plan["copied"].as_array().unwrap();
    assert!(
        copied
            .iter()
            .any(|c| c[0].as_str().unwrap().contains("proj_out")
                && c[1].as_str().unwrap().contains("missing from L")),
        "{plan}"
    );
    assert!(plan["memory"]["anonymous"].as_u64().unwrap() > 0);
    assert!(plan["output_bytes"].as_u64().unwrap() > plan["read_bytes"].as_u64().unwrap() / 4);
}

/// A dry run reads no tensor data: after dropping the inputs from the page cache, it leaves
/// almost none of their pages resident (`fincore`), where reading them makes all resident.
#[cfg(target_os = "linux")]
#[test]
fn dry_run_reads_no_tensor_data() {
    use std::os::fd::AsRawFd;
    let has_fincore = std::process::Command::new("fincore")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fincore {
        say_skipped("dry_run_reads_no_tensor_data (no fincore)");
        return;
    }
    let dir = Dir::new();
    let mut paths = Vec::new();
    for (i, delta) in [None, Some("5:0.2"), Some("6:0.2")].iter().enumerate() {
        let p = dir.path(&format!("m{i}.safetensors"));
        let mut args = vec![
            "synth",
            "model",
            "--arch",
            "sd1",
            "--scale",
            "4",
            "--seed",
            "2",
            s(&p),
            "-q",
        ];
        if let Some(d) = delta {
            args.extend(["--delta", d]);
        }
        run_ok(&args);
        paths.push(p);
    }
    let resident = |p: &std::path::Path| -> u64 {
        let o = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let evict = |p: &std::path::Path| {
        let f = std::fs::File::open(p).unwrap();
        // SAFETY: a valid open descriptor; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    };
    let size = std::fs::metadata(&paths[1]).unwrap().len();
    evict(&paths[1]);
    let _ = std::fs::read(&paths[1]).unwrap();
    if resident(&paths[1]) < size / 2 {
        say_skipped("dry_run_reads_no_tensor_data (the page cache does not report residency here)");
        return;
    }
    let recipe = dir.path("r.recipe");
    std::fs::write(
        &recipe,
        format!(
            "B = \"{}\"\nF1 = \"{}\"\nF2 = \"{}\"\nOUT = tgmd(B, F1, F2)\n",
            s(&paths[0]),
            s(&paths[1]),
            s(&paths[2])
        ),
    )
    .unwrap();
    paths.iter().for_each(|p| evict(p));
    run_ok(&words(
        "merge {} -o {} --dry-run",
        &[s(&recipe), s(&dir.path("out.safetensors"))],
    ));
    for p in &paths {
        let r = resident(p);
        assert!(
            r < size / 10,
            "{}: {r} of {size} bytes resident after a dry run",
            p.display()
        );
    }
}
