//! `index` and `lineage` on a planted family (`synth family`: a base, three fine-tunes and
//! merges with known per-block recipes, family.json).

use crate::util::{
    Dir, assert_lineage_weight, lineage_parents, member, run_json, run_ok, s, synth_family, words,
};

#[test]
fn test_lineage_names_planted_parents_and_leaves_fine_tunes_unexplained() {
    let dir = Dir::new();
    let fam = dir.path("fam");
    synth_family(&fam, "sd1", 16, 3, 3);
    let ix = dir.path("ix.sqlite");
    let names = ["base", "ft1", "ft2", "ft3", "ws-ft1-ft2"];
    let paths: Vec<String> = names.iter().map(|n| member(&fam, n)).collect();
    let mut args = vec!["index", "--index", s(&ix), "add", "-q"];
    args.extend(paths.iter().map(String::as_str));
    run_ok(&args);
    // Adding again reads nothing: every file is unchanged.
    let again = run_ok(&args);
    assert_eq!(again.matches("unchanged").count(), names.len(), "{again}");
    // The block-weighted merge: ft1 x (1-a) + ft2 x a, a = IN 0.2, M 0.5, OUT 0.8.
    let target = member(&fam, "mbw-ft1-ft2");
    let v = run_json(&words(
        "lineage {} --index {} --base base --verify --report {} -q",
        &[&target, s(&ix), s(&dir.path("report"))],
    ));
    assert_eq!(v["is_merge"], true);
    // The HTML family tree: both parents under the target, with their planted weights per
    // group on the edges, and the 50/50 merge greyed as left out.
    let html = std::fs::read_to_string(dir.path("report").join("index.html")).unwrap();
    let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
    for want in [
        "mbw-ft1-ft2.safetensors",
        ">ft1<",
        ">ft2<",
        ">base<",
        "ws-ft1-ft2",
    ] {
        assert!(svg.contains(want), "{want} not in the tree");
    }
    assert!(svg.contains("IN 0.80 · M 0.50 · OUT 0.20"), "ft1's weights");
    assert!(svg.contains("IN 0.20 · M 0.50 · OUT 0.80"), "ft2's weights");
    assert_eq!(lineage_parents(&v), ["ft1", "ft2"]);
    assert_eq!(v["merges_left_out"], serde_json::json!(["ws-ft1-ft2"]));
    let truth = [("IN", 0.8, 0.2), ("M", 0.5, 0.5), ("OUT", 0.2, 0.8)];
    for (group, w1, w2) in truth {
        assert_lineage_weight(&v, group, "ft1", w1);
        assert_lineage_weight(&v, group, "ft2", w2);
    }
    assert!(
        v["verified"]["lowest"].as_f64().unwrap() >= 0.9999,
        "{}",
        v["verified"]
    );
    // A fine-tune is no merge of the others.
    let v = run_json(&words(
        "lineage {} --index {} --base base -q",
        &[&paths[3], s(&ix)],
    ));
    assert_eq!(v["is_merge"], false);
    assert!(v["explained"].as_f64().unwrap() < 0.5);
    assert_eq!(v["parents"], serde_json::json!([]));
}

/// A planted recipe: per group (IN, M00, OUT, BASE) one weight per parent.
struct Planted {
    name: String,
    parents: Vec<String>,
    /// [group][parent]
    weights: [Vec<f64>; 4],
}

/// 40 models, 20 per layout (SD1 and SDXL, 1/32 widths): a base, 8 fine-tunes, the three
/// merges of `synth family`, and 8 merges written by `merge` from planted per-block recipes
/// of 2 or 3 fine-tunes. Every merge is a target: `lineage` from the index alone must name
/// its parents, each planted weight must lie within the stated error bar, and `--verify`
/// must clone it (>= 99.99%). Precision and recall over all 22 targets are printed.
#[test]
fn test_lineage_over_forty_planted_models() {
    let dir = Dir::new();
    let ix = dir.path("ix.sqlite");
    let (mut hits, mut predicted, mut truth_total) = (0usize, 0usize, 0usize);
    let mut lcg = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        lcg = lcg
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (lcg >> 11) as f64 / (1u64 << 53) as f64
    };
    for arch in ["sd1", "sdxl"] {
        let fam = dir.path(arch);
        synth_family(&fam, arch, 32, 7, 8);
        let file = |n: &str| member(&fam, n);
        let mut planted = vec![
            Planted {
                name: "ws-ft1-ft2".into(),
                parents: vec!["ft1".into(), "ft2".into()],
                weights: [
                    vec![0.5, 0.5],
                    vec![0.5, 0.5],
                    vec![0.5, 0.5],
                    vec![0.5, 0.5],
                ],
            },
            Planted {
                name: "mbw-ft1-ft2".into(),
                parents: vec!["ft1".into(), "ft2".into()],
                weights: [
                    vec![0.8, 0.2],
                    vec![0.5, 0.5],
                    vec![0.2, 0.8],
                    vec![1.0, 0.0],
                ],
            },
            Planted {
                name: "ad-ft1-ft8".into(),
                parents: vec!["ft1".into(), "ft8".into()],
                weights: [
                    vec![1.0, 0.7],
                    vec![1.0, 0.7],
                    vec![1.0, 0.7],
                    vec![1.0, 0.7],
                ],
            },
        ];
        for m in 0..8 {
            let k = 2 + m % 2;
            let mut parents: Vec<usize> = Vec::new();
            while parents.len() < k {
                let p = 1 + (next() * 8.0) as usize;
                if !parents.contains(&p) {
                    parents.push(p);
                }
            }
            let weights: [Vec<f64>; 4] = std::array::from_fn(|_| {
                let raw: Vec<f64> = (0..k).map(|_| 0.3 + next()).collect();
                let sum: f64 = raw.iter().sum();
                raw.iter()
                    .map(|w| (w / sum * 1000.0).round() / 1000.0)
                    .collect()
            });
            let name = format!("m{m}");
            let mut recipe = String::new();
            for (i, p) in parents.iter().enumerate() {
                recipe.push_str(&format!("P{i} = {}\n", file(&format!("ft{p}"))));
            }
            let terms: Vec<String> = (0..k).map(|i| format!("P{i} x w{i}")).collect();
            recipe.push_str(&format!("OUT = {}\n", terms.join(" + ")));
            for (i, ((a, b), (c, d))) in weights[0]
                .iter()
                .zip(&weights[1])
                .zip(weights[2].iter().zip(&weights[3]))
                .enumerate()
            {
                recipe.push_str(&format!(
                    "    w{i} = {{IN: {a}, M00: {b}, OUT: {c}, BASE: {d}}}\n"
                ));
            }
            let rp = fam.join(format!("{name}.recipe"));
            std::fs::write(&rp, recipe).unwrap();
            run_ok(&["merge", s(&rp), "-o", &file(&name), "-q"]);
            planted.push(Planted {
                name,
                parents: parents.iter().map(|p| format!("ft{p}")).collect(),
                weights,
            });
        }
        let mut names: Vec<String> = vec!["base".into()];
        names.extend((1..=8).map(|i| format!("ft{i}")));
        names.extend(planted.iter().map(|p| p.name.clone()));
        assert_eq!(names.len(), 20);
        let paths: Vec<String> = names.iter().map(|n| file(n)).collect();
        let mut args = vec!["index", "--index", s(&ix), "add", "-q"];
        args.extend(paths.iter().map(String::as_str));
        run_ok(&args);
        for p in &planted {
            let v = run_json(&words(
                "lineage {} --index {} --base base --verify -q",
                &[&file(&p.name), s(&ix)],
            ));
            let got: Vec<String> = v["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            assert_eq!(v["is_merge"], true, "{arch} {}: {v}", p.name);
            hits += got.iter().filter(|g| p.parents.contains(g)).count();
            predicted += got.len();
            truth_total += p.parents.len();
            for (group, gi) in [("IN", 0), ("M", 1), ("OUT", 2), ("TE1", 3), ("VAE", 3)] {
                let Some(g) = v["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|g| g["group"] == group)
                else {
                    continue;
                };
                if g["delta_norm2"].as_f64().unwrap() == 0.0 {
                    continue;
                }
                for (parent, want) in p.parents.iter().zip(&p.weights[gi]) {
                    let w = g["weights"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|w| w[0] == parent.as_str());
                    let (got, err) = w.map_or((0.0, 0.0), |w| {
                        (w[1].as_f64().unwrap(), w[2].as_f64().unwrap())
                    });
                    // A parent whose row equals the base there (a fine-tune that kept the
                    // base's text encoder) has no delta to weigh.
                    if group != "IN" && group != "M" && group != "OUT" && got == 0.0 {
                        continue;
                    }
                    assert!(
                        (got - want).abs() <= err + 2e-3,
                        "{arch} {} {group} {parent}: {got} ± {err} vs {want}",
                        p.name
                    );
                }
            }
            assert!(
                v["verified"]["lowest"].as_f64().unwrap() >= 0.9999,
                "{arch} {}: {}",
                p.name,
                v["verified"]
            );
        }
    }
    let precision = hits as f64 / predicted as f64;
    let recall = hits as f64 / truth_total as f64;
    eprintln!("lineage over 22 planted merges: precision {precision:.3}, recall {recall:.3}");
    assert_eq!(recall, 1.0);
    assert!(precision >= 0.95, "precision {precision}");
}

/// `index export --parquet`, read back by DuckDB and compared record by record with the index
/// as Python's sqlite3 reads it (tests/oracle/parquet.py).
#[test]
fn test_parquet_export_matches_the_index_in_duckdb() {
    let dir = Dir::new();
    let fam = dir.path("fam");
    synth_family(&fam, "sd1", 32, 0, 2);
    let ix = dir.path("ix.sqlite");
    let mut args = vec!["index", "--index", s(&ix), "add", "-q"];
    let files: Vec<String> = ["base", "ft1", "ft2", "ws-ft1-ft2"]
        .iter()
        .map(|n| member(&fam, n))
        .collect();
    args.extend(files.iter().map(String::as_str));
    run_ok(&args);
    let pq = dir.path("ix.parquet");
    let out = run_ok(&words(
        "index --index {} export --parquet {} -q",
        &[s(&ix), s(&pq)],
    ));
    assert!(out.contains("records"), "{out}");
    let python = std::env::var(ckpt_read::env::PYTHON.name).unwrap_or_else(|_| "python3".into());
    let oracle = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/parquet.py");
    let o = std::process::Command::new(&python)
        .args([s(&oracle), s(&ix), s(&pq)])
        .output()
        .unwrap_or_else(|e| panic!("the Python oracle ({python}) could not run: {e}"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    if v["duckdb"] == false {
        assert!(
            std::env::var(ckpt_read::env::REQUIRE_PY_DUCKDB.name).is_err(),
            "the Python duckdb module is required but missing"
        );
        crate::util::say_skipped(
            "test_parquet_export_matches_the_index_in_duckdb (Python's duckdb module is not installed; .ci/run installs it)",
        );
        return;
    }
    assert_eq!(v["mismatches"], 0, "{v}");
    assert_eq!(v["records"], v["want"]);
    assert!(v["records"].as_u64().unwrap() >= 4 * 20, "{v}");
    let (a, b) = (
        v["dot_sql"].as_f64().unwrap(),
        v["dot_direct"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
}
