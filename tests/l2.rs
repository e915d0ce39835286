//! `ckpt-diff l2` against a naive computation over independently read tensors; exactness
//! for nearly equal models; MDS on a planted planar family; charts decoded.

// The reference computations are straight index loops on purpose: the plainest form.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_core::catalog::Arch;
use ckpt_ops::synth::{Layout, Synthetic, family, uniform};
use ckpt_read::dtype::FloatFormat;

use crate::util::*;

fn family_files(d: &Dir, arch: Arch, dtype: FloatFormat) -> Vec<PathBuf> {
    let scale = match arch.id() {
        "sd1" | "sd2" => 16,
        _ => 32,
    };
    let lay = layout(arch, scale, dtype);
    family::family(arch, 9, 3, 0.15)
        .iter()
        .map(|m| d.model(&format!("{}.safetensors", m.name), &lay, &m.model))
        .collect()
}

/// Per scope (component or all): [i][j] squared distances and the centred Gram, naively.
struct Naive {
    dist2: BTreeMap<String, Vec<Vec<f64>>>,
    dots: BTreeMap<String, Vec<Vec<f64>>>,
    row_dist2: BTreeMap<String, Vec<f64>>,
    row_base2: BTreeMap<String, f64>,
}

fn naive(files: &[PathBuf], arch: Arch) -> Naive {
    let maps: Vec<_> = files.iter().map(|p| dequantized_map(p)).collect();
    let n = files.len();
    let mut out = Naive {
        dist2: BTreeMap::new(),
        dots: BTreeMap::new(),
        row_dist2: BTreeMap::new(),
        row_base2: BTreeMap::new(),
    };
    for (key, t) in &maps[0] {
        let Some(_) = &t.values else { continue };
        let vals: Vec<&Vec<f64>> = maps
            .iter()
            .map(|m| m[key].values.as_ref().unwrap())
            .collect();
        let row = arch_row(arch, key);
        let comp = row_component(arch, &row);
        for scope in [comp, "all"] {
            let d2 = out
                .dist2
                .entry(scope.into())
                .or_insert_with(|| vec![vec![0.0; n]; n]);
            let dots = out
                .dots
                .entry(scope.into())
                .or_insert_with(|| vec![vec![0.0; n]; n]);
            for e in 0..vals[0].len() {
                for i in 0..n {
                    for j in 0..n {
                        let (a, b) = (vals[i][e], vals[j][e]);
                        d2[i][j] += (a - b) * (a - b);
                        dots[i][j] += (a - vals[0][e]) * (b - vals[0][e]);
                    }
                }
            }
        }
        let rd = out
            .row_dist2
            .entry(row.clone())
            .or_insert_with(|| vec![0.0; n]);
        for e in 0..vals[0].len() {
            for (i, v) in vals.iter().enumerate() {
                rd[i] += (v[e] - vals[0][e]).powi(2);
            }
            *out.row_base2.entry(row.clone()).or_default() += vals[0][e] * vals[0][e];
        }
    }
    out
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

pub(crate) fn check_family(arch: Arch, dtype: FloatFormat) {
    let d = Dir::new();
    let files = family_files(&d, arch, dtype);
    let mut args = vec!["l2", "--base", s(&files[0])];
    args.extend(files[1..].iter().map(|p| s(p)));
    let j = run_json(&args);
    let want = naive(&files, arch);
    let n = files.len();
    for sc in j["scopes"].as_array().unwrap() {
        let name = sc["name"].as_str().unwrap();
        let (d2, dots) = (&want.dist2[name], &want.dots[name]);
        for i in 0..n {
            for k in 0..n {
                let got = sc["distance"][i][k].as_f64().unwrap();
                assert!(
                    close(got, d2[i][k].sqrt(), 1e-9),
                    "{name} distance {i},{k}: {got} vs {}",
                    d2[i][k].sqrt()
                );
            }
        }
        for i in 1..n {
            for k in 1..n {
                let got = sc["delta_cosine"][i - 1][k - 1].as_f64().unwrap();
                let (a, b) = (dots[i][i], dots[k][k]);
                let w = if a == 0.0 && b == 0.0 {
                    1.0
                } else if a == 0.0 || b == 0.0 {
                    0.0
                } else {
                    dots[i][k] / (a * b).sqrt()
                };
                assert!(
                    (got - w).abs() <= 1e-9,
                    "{name} delta cosine {i},{k}: {got} vs {w}"
                );
            }
        }
    }
    for (k, row) in j["rows"].as_array().unwrap().iter().enumerate() {
        let label = row["label"].as_str().unwrap();
        let base = want.row_base2[label].sqrt();
        assert!(
            close(j["base_norm"][k].as_f64().unwrap(), base, 1e-9),
            "{label} base norm"
        );
        for m in 1..n {
            let dist = want.row_dist2[label][m].sqrt();
            assert!(
                close(j["from_base"][m - 1][k].as_f64().unwrap(), dist, 1e-9),
                "{label} model {m}"
            );
            assert!(close(
                j["relative"][m - 1][k].as_f64().unwrap(),
                dist / base,
                1e-9
            ));
        }
    }
}

#[test]
fn sd1_family_matches_naive_computation() {
    check_family(arch("sd1"), FloatFormat::F16);
}

/// Z-Image whole: its rows, and its text encoder and VAE as scopes of their own.
#[test]
fn z_image_family_matches_naive_computation() {
    check_family(arch("z-image"), FloatFormat::BF16);
}

#[test]
fn sdxl_family_matches_naive_computation() {
    check_family(arch("sdxl"), FloatFormat::BF16);
}

/// A model that differs from the base in one element: the distance is that difference,
/// exactly, although the checkpoint's norm is millions of times larger.
#[test]
fn one_element_apart_is_measured_exactly() {
    for (dtype, name) in [(FloatFormat::F32, "F32"), (FloatFormat::F16, "F16")] {
        let d = Dir::new();
        let base = d.model(
            "base.safetensors",
            &layout(arch("sdxl"), 32, dtype),
            &Synthetic::base(arch("sdxl"), 1),
        );
        let twin = d.path("twin.safetensors");
        let key = "model.diffusion_model.middle_block.1.proj_in.weight";
        let mut delta = 0.0;
        rewrite(&base, &twin, |t| {
            let x = t.iter_mut().find(|x| x.name == key).unwrap();
            if name == "F32" {
                let v = f32::from_le_bytes(x.data[40..44].try_into().unwrap());
                let w = v + 1e-3;
                delta = (w as f64 - v as f64).abs();
                x.data[40..44].copy_from_slice(&w.to_le_bytes());
            } else {
                let v = half::f16::from_le_bytes([x.data[40], x.data[41]]);
                let w = half::f16::from_f64(v.to_f64() + 1e-3);
                delta = (w.to_f64() - v.to_f64()).abs();
                x.data[40..42].copy_from_slice(&w.to_le_bytes());
            }
        });
        let j = run_json(&["l2", "--base", s(&base), s(&twin)]);
        let all = find_row(&j["scopes"], "name", "all");
        let got = all["from_base"][0].as_f64().unwrap();
        assert!(
            (got - delta).abs() <= 1e-6 * delta,
            "{name}: {got} vs {delta}"
        );
        assert!(
            (delta - 1e-3).abs() < 1e-3 * 0.01,
            "{name}: the planted difference is about 1e-3 ({delta})"
        );
        assert!(all["base_norm"].as_f64().unwrap() > 10.0);
        let unet = find_row(&j["scopes"], "name", "unet");
        assert!((unet["distance"][0][1].as_f64().unwrap() - delta).abs() <= 1e-6 * delta);
    }
}

/// Models planted in a plane (base + a·D1 + b·D2, stored in f64): the map reproduces every
/// distance.
#[test]
fn mds_reproduces_a_planar_family() {
    let d = Dir::new();
    let arch = arch("sd1");
    let lay: Layout = layout(arch, 32, FloatFormat::F64);
    let base = Synthetic::base(arch, 2);
    let points = [
        (0.0, 0.0),
        (1.0, 0.0),
        (0.0, 1.0),
        (0.5, 0.8),
        (-0.7, 0.3),
        (0.9, -0.6),
    ];
    let files: Vec<PathBuf> = points
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            d.model(
                &format!("p{i}.safetensors"),
                &lay,
                &base
                    .plus_delta(50, uniform(arch, *a))
                    .plus_delta(51, uniform(arch, *b)),
            )
        })
        .collect();
    let mut args = vec!["l2", "--base", s(&files[0])];
    args.extend(files[1..].iter().map(|p| s(p)));
    let j = run_json(&args);
    let all = find_row(&j["scopes"], "name", "all");
    let coords: Vec<(f64, f64)> = all["mds"]["coords"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_f64().unwrap(), c[1].as_f64().unwrap()))
        .collect();
    for i in 0..points.len() {
        for k in 0..points.len() {
            let truth = all["distance"][i][k].as_f64().unwrap();
            let mapped =
                ((coords[i].0 - coords[k].0).powi(2) + (coords[i].1 - coords[k].1).powi(2)).sqrt();
            assert!(
                (mapped - truth).abs() <= 1e-9 * truth.max(1.0),
                "{i},{k}: map {mapped} vs {truth}"
            );
        }
    }
    assert!(all["mds"]["stress"].as_f64().unwrap() < 1e-9);
    assert!(all["mds"]["variance_explained"].as_f64().unwrap() > 1.0 - 1e-9);
}

fn decode_png(p: &Path) -> (u32, u32, f64) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let inked = bytes
        .chunks(px)
        .filter(|c| c.iter().take(3).any(|&v| v < 200))
        .count();
    (
        info.width,
        info.height,
        inked as f64 / (info.width * info.height) as f64,
    )
}

#[test]
fn report_with_charts() {
    let d = Dir::new();
    let files = family_files(&d, arch("sd1"), FloatFormat::F16);
    let dir = d.path("report");
    let mut args = vec!["l2", "--base", s(&files[0]), "--report", s(&dir)];
    args.extend(files[1..].iter().map(|p| s(p)));
    run_ok(&args);
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.matches("<svg").count() >= 6, "charts inline");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no network needed"
    );
    assert!(html.contains("ft1.safetensors") && html.contains("ckpt-diff l2"));
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("![") && md.contains(".png)"));
    for png in [
        "from-base.png",
        "from-base-relative.png",
        "heatmap-blocks.png",
        "map-all.png",
        "map-unet.png",
        "heatmap-distance.png",
    ] {
        let (w, h, inked) = decode_png(&dir.join(png));
        assert!(w >= 700 && h >= 300, "{png}: {w}x{h}");
        assert!(
            inked > 0.005 && inked < 0.9,
            "{png}: {:.3} of the pixels drawn",
            inked
        );
    }
}

#[test]
fn fifty_models_stay_legible() {
    let d = Dir::new();
    let arch = arch("sd1");
    let lay = layout(arch, 64, FloatFormat::F16);
    let base = Synthetic::base(arch, 3);
    let mut files = vec![d.model("base.safetensors", &lay, &base)];
    for i in 0..50 {
        files.push(d.model(
            &format!("model-with-a-long-name-{i:02}.safetensors"),
            &lay,
            &base.plus_delta(300 + i, uniform(arch, 0.05 + 0.002 * i as f64)),
        ));
    }
    let dir = d.path("report50");
    let mut args = vec!["l2", "--base", s(&files[0]), "--report", s(&dir), "-q"];
    args.extend(files[1..].iter().map(|p| s(p)));
    let text = run_ok(&args);
    assert!(
        text.contains("--report DIR"),
        "the terminal shows the summary only"
    );
    for png in [
        "from-base.png",
        "heatmap-blocks.png",
        "map-all.png",
        "heatmap-distance.png",
    ] {
        let (_, h, inked) = decode_png(&dir.join(png));
        assert!(h >= 50 * 16, "{png}: room for 50 models ({h} px)");
        assert!(inked > 0.005, "{png}");
    }
}

#[test]
fn sim_report() {
    let d = Dir::new();
    let files = family_files(&d, arch("sd1"), FloatFormat::F16);
    let dir = d.path("sim");
    run_ok(&["sim", s(&files[1]), s(&files[2]), "--report", s(&dir), "-q"]);
    assert!(
        std::fs::read_to_string(dir.join("index.html"))
            .unwrap()
            .contains("<svg")
    );
    let (w, _, inked) = decode_png(&dir.join("similarity.png"));
    assert!(w >= 1000 && inked > 0.005);
}

#[test]
fn flux_and_sd3_families_match_naive_computation() {
    check_family(arch("flux"), FloatFormat::BF16);
    check_family(arch("sd3"), FloatFormat::F8E4M3);
}
