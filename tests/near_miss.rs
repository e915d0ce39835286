//! The near-miss corpus: every architecture of the catalog, made slightly wrong in the ways
//! files in the wild are (widths of another size of the family, renamed keys, foreign keys,
//! truncated, quantized), and no command may give a confident wrong answer on any of them.
//! A file that carries an architecture's names with other shapes is read generically and
//! said to look like it; `fix --base` never fills it from the base.

use std::path::{Path, PathBuf};

use ckpt_core::catalog::Arch;
use ckpt_ops::synth::Synthetic;
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

/// The real layout of `arch`, scaled down by 32, as BF16.
fn base(d: &Dir, arch: Arch) -> PathBuf {
    d.model(
        &format!("{}.safetensors", arch.id()),
        &layout(arch, 32, FloatFormat::BF16),
        &Synthetic::base(arch, 3),
    )
}

/// Every width of 16 or more grown by half in one float tensor of `every`: another size
/// of the same family (FLUX.2 klein is Flux.1's names with other MLP widths: 62 of its
/// 149 keys have Flux.1's names and other shapes).
fn widened(src: &Path, dst: &Path, every: usize) {
    rewrite(src, dst, |tensors| {
        for (i, t) in tensors.iter_mut().enumerate() {
            if !matches!(t.dtype.as_str(), "BF16" | "F16" | "F32") || i % every != 0 {
                continue;
            }
            let size = t.data.len() / t.shape.iter().product::<usize>().max(1);
            t.shape = t
                .shape
                .iter()
                .map(|&x| if x >= 16 { x + x / 2 } else { x })
                .collect();
            let n: usize = t.shape.iter().product();
            t.data = (0..n * size).map(|i| (i % 7) as u8 + 1).collect();
        }
    });
}

fn inspect_arch(path: &Path) -> (String, String, String) {
    let r = run_json(&["inspect", s(path)]);
    (
        r["arch"]["id"].as_str().unwrap().to_string(),
        r["arch"]["confidence"].as_str().unwrap().to_string(),
        r["arch"]["summary"].as_str().unwrap().to_string(),
    )
}

#[test]
fn no_command_is_confident_about_a_near_miss() {
    let d = Dir::new();
    for &arch in Arch::all() {
        let real = base(&d, arch);
        let id = arch.id();
        // Another width of the family: not named, said to look like it.
        let wide = d.path(&format!("{id}-wide.safetensors"));
        for every in [1, 3] {
            widened(&real, &wide, every);
            let (got, level, summary) = inspect_arch(&wide);
            assert_eq!(got, "unknown", "{id} widened 1/{every}: {summary}");
            assert_ne!(level, "high", "{id} widened 1/{every}: {summary}");
            assert!(
                summary.contains("looks like"),
                "{id} widened 1/{every}: {summary}"
            );
        }
        // fix with a base of the architecture fills nothing into it.
        let out = d.path("fixed.safetensors");
        let (code, stdout, stderr) =
            run_code(&["fix", s(&wide), "--base", s(&real), "-o", s(&out), "--json"]);
        if code == 0 || code == 1 {
            let fixed = read_raw(&out).0;
            let from_wide = read_raw(&wide).0;
            assert_eq!(
                fixed.iter().map(|t| &t.name).collect::<Vec<_>>(),
                from_wide.iter().map(|t| &t.name).collect::<Vec<_>>(),
                "{id}: fix copied keys in from the base: {stdout}"
            );
            std::fs::remove_file(&out).unwrap();
        } else {
            assert_eq!(code, 2, "{stdout}{stderr}");
        }
        // Renamed keys: no architecture.
        let renamed = d.path(&format!("{id}-renamed.safetensors"));
        rewrite(&real, &renamed, |tensors| {
            for t in tensors.iter_mut() {
                t.name = t.name.replace('.', "/");
            }
        });
        let (got, level, summary) = inspect_arch(&renamed);
        assert_eq!(
            (got.as_str(), level.as_str()),
            ("unknown", "none"),
            "{id}: {summary}"
        );
        // As many foreign keys as its own: never high.
        let foreign = d.path(&format!("{id}-foreign.safetensors"));
        rewrite(&real, &foreign, |tensors| {
            let extra: Vec<RawTensor> = tensors
                .iter()
                .map(|t| RawTensor {
                    name: format!("extra.{}", t.name),
                    ..t.clone()
                })
                .collect();
            tensors.extend(extra);
        });
        let (_, level, summary) = inspect_arch(&foreign);
        assert_ne!(level, "high", "{id} with foreign keys: {summary}");
        // Truncated: refused, not read in part.
        let cut = d.path(&format!("{id}-cut.safetensors"));
        let bytes = std::fs::read(&real).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        for args in [vec!["inspect", s(&cut)], vec!["sim", s(&cut), s(&real)]] {
            let (code, _, stderr) = run_code(&args);
            assert_eq!(code, 2, "{id} truncated, {args:?}: {stderr}");
            assert!(stderr.contains("truncated"), "{stderr}");
        }
        // Quantized per layer: still exactly what it is, read decoded.
        let q = d.path(&format!("{id}-int8.safetensors"));
        comfy_int8(&real, &q, false, |name| {
            name.contains("_blocks.") || name.contains("transformer_blocks")
        });
        let (got, _, summary) = inspect_arch(&q);
        assert_eq!(got, id, "{id} int8: {summary}");
        for f in [&wide, &renamed, &foreign, &cut, &q] {
            let _ = std::fs::remove_file(f);
        }
    }
}
