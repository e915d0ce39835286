//! `index` and `lineage` on a planted family (`synth family`: a base, three fine-tunes and
//! merges with known per-block recipes, family.json).

use crate::util::{Dir, run_json, run_ok, s};

#[test]
fn test_lineage_names_planted_parents_and_leaves_fine_tunes_unexplained() {
    let dir = Dir::new();
    let fam = dir.path("fam");
    run_ok(&[
        "synth",
        "family",
        s(&fam),
        "--scale",
        "16",
        "--seed",
        "3",
        "--finetunes",
        "3",
        "-q",
    ]);
    let ix = dir.path("ix.sqlite");
    let names = ["base", "ft1", "ft2", "ft3", "ws-ft1-ft2"];
    let paths: Vec<String> = names
        .iter()
        .map(|n| s(&fam.join(format!("{n}.safetensors"))).to_string())
        .collect();
    let mut args = vec!["index", "--index", s(&ix), "add", "-q"];
    args.extend(paths.iter().map(String::as_str));
    run_ok(&args);
    // Adding again reads nothing: every file is unchanged.
    let again = run_ok(&args);
    assert_eq!(again.matches("unchanged").count(), names.len(), "{again}");
    // The block-weighted merge: ft1 x (1-a) + ft2 x a, a = IN 0.2, M 0.5, OUT 0.8.
    let target = fam.join("mbw-ft1-ft2.safetensors");
    let v = run_json(&[
        "lineage",
        s(&target),
        "--index",
        s(&ix),
        "--base",
        "base",
        "--verify",
        "-q",
    ]);
    assert_eq!(v["is_merge"], true);
    let mut parents: Vec<&str> = v["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    parents.sort();
    assert_eq!(parents, ["ft1", "ft2"]);
    assert_eq!(v["merges_left_out"], serde_json::json!(["ws-ft1-ft2"]));
    let truth = [("IN", 0.8, 0.2), ("M", 0.5, 0.5), ("OUT", 0.2, 0.8)];
    for (group, w1, w2) in truth {
        let g = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == group)
            .unwrap();
        for (name, want) in [("ft1", w1), ("ft2", w2)] {
            let w = g["weights"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w[0] == name)
                .unwrap();
            let (got, err) = (w[1].as_f64().unwrap(), w[2].as_f64().unwrap());
            assert!(
                (got - want).abs() <= err + 1e-6,
                "{group} {name}: {got} ± {err} vs {want}"
            );
        }
    }
    assert!(
        v["verified"]["lowest"].as_f64().unwrap() >= 0.9999,
        "{}",
        v["verified"]
    );
    // A fine-tune is no merge of the others.
    let v = run_json(&[
        "lineage",
        &paths[3],
        "--index",
        s(&ix),
        "--base",
        "base",
        "-q",
    ]);
    assert_eq!(v["is_merge"], false);
    assert!(v["explained"].as_f64().unwrap() < 0.5);
    assert_eq!(v["parents"], serde_json::json!([]));
}
