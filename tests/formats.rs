//! `--csv` and `--markdown` against the same command's `--json`: every value a table
//! prints is the one the JSON holds (parsed back here with a CSV reader of its own), and
//! the Markdown has the same rows.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::{Dir, member, run_code, run_json, run_ok, s, synth_family, words};

/// RFC 4180 CSV read back: the tables, a blank line between them, each its rows (the
/// header first).
fn csv_tables(text: &str) -> Vec<Vec<Vec<String>>> {
    let mut tables = Vec::new();
    let (mut table, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => record.push(std::mem::take(&mut field)),
            '\n' if !quoted => {
                if record.is_empty() && field.is_empty() {
                    tables.push(std::mem::take(&mut table));
                } else {
                    record.push(std::mem::take(&mut field));
                    table.push(std::mem::take(&mut record));
                }
            }
            c => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "{text}");
    tables.push(table);
    tables
}

/// The Markdown tables of a text: each its rows (the header first, the `---` row left out).
fn markdown_tables(text: &str) -> Vec<Vec<Vec<String>>> {
    let mut tables = Vec::new();
    let mut table: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("| ").and_then(|l| l.strip_suffix(" |")) {
            Some(cells) if !cells.starts_with("---") => {
                table.push(cells.split(" | ").map(str::to_string).collect())
            }
            Some(_) => {}
            None if !table.is_empty() => tables.push(std::mem::take(&mut table)),
            None => {}
        }
    }
    if !table.is_empty() {
        tables.push(table);
    }
    tables
}

/// Runs `args` with `flag` appended and returns stdout whatever the exit code (validate
/// exits 1 on warnings).
fn run_with(args: &[&str], flag: &str) -> String {
    let mut a = args.to_vec();
    a.push(flag);
    let (code, out, err) = run_code(&a);
    assert!(code == 0 || code == 1, "{a:?}: exit {code}: {err}");
    out
}

/// The JSON of `args`, whatever the exit code.
fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&run_with(args, "--json")).expect("JSON")
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A small SD1 family (base, ft1..ft3, merges of them) in `dir/fam`.
fn family(dir: &Dir) -> PathBuf {
    let fam = dir.path("fam");
    synth_family(&fam, "sd1", 32, 5, 3);
    fam
}

#[test]
fn hash_csv_has_a_row_per_file_with_every_digit_of_the_json() {
    let dir = Dir::new();
    let fam = family(&dir);
    let (a, b) = (member(&fam, "ft1"), member(&fam, "ft2"));
    let args = ["hash", a.as_str(), b.as_str(), "--components", "-q"];
    let json = json_of(&args);
    let tables = csv_tables(&run_with(&args, "--csv"));
    assert_eq!(tables.len(), 2, "files, then components");
    let (files, components) = (&tables[0], &tables[1]);
    let head = &files[0];
    assert_eq!(head[0], "file");
    assert_eq!(files.len(), 3);
    for (row, f) in files[1..].iter().zip(json["files"].as_array().unwrap()) {
        assert_eq!(row[0], f["path"].as_str().unwrap());
        for (name, cell) in head.iter().zip(row).skip(1) {
            let want = match name.as_str() {
                "container" => str_of(&f["container"]),
                "toolkit_metric" => str_of(&f["components"]["metric"]["display"]),
                h => str_of(&f["hashes"][h]),
            };
            assert_eq!(*cell, want, "{name}");
        }
        assert_eq!(
            row[head.iter().position(|h| h == "sha256").unwrap()].len(),
            64
        );
    }
    let want: Vec<Vec<String>> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            f["components"]["components"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    vec![
                        str_of(&f["path"]),
                        str_of(&c["component"]),
                        str_of(&c["tensors"]),
                        str_of(&c["params"]),
                        str_of(&c["exact"]),
                        str_of(&c["fp16"]),
                    ]
                })
        })
        .collect();
    assert_eq!(want.len(), 6, "unet, te1, vae of each file");
    assert_eq!(components[1..], want[..]);
    // Markdown is what the terminal shows: AutoV2 in upper case, as Civitai shows it.
    let md = run_with(&args, "--markdown");
    let autov2 = str_of(&json["files"][0]["hashes"]["autov2"]).to_uppercase();
    let tables = markdown_tables(&md);
    assert_eq!(tables.len(), 4, "hashes and components of each file");
    assert!(tables[0].iter().any(|r| r[0] == "AutoV2" && r[1] == autov2));
}

/// A file with findings of every severity: an EMA copy, schedule buffers, f32 floats.
fn heavy(dir: &Dir) -> String {
    let p = dir.path("heavy.safetensors");
    run_ok(&words(
        "synth model {} --arch sd1 --scale 32 --ema --scheduler --dtype f32 -q",
        &[s(&p)],
    ));
    s(&p).to_string()
}

/// The findings table as the JSON's files hold them.
fn findings_of(files: &[Value]) -> Vec<Vec<String>> {
    files
        .iter()
        .flat_map(|f| {
            f["findings"].as_array().unwrap().iter().map(|x| {
                vec![
                    str_of(&f["path"]),
                    str_of(&x["severity"]),
                    str_of(&x["code"]),
                    str_of(&x["message"]),
                    x["keys"].as_array().unwrap().len().to_string(),
                    str_of(&x["fix"]),
                ]
            })
        })
        .collect()
}

#[test]
fn validate_tables_are_the_json_findings() {
    let dir = Dir::new();
    let fam = family(&dir);
    let heavy = heavy(&dir);
    let base = member(&fam, "base");
    let args = ["validate", heavy.as_str(), base.as_str(), "-q"];
    let json = json_of(&args);
    let want = findings_of(json["files"].as_array().unwrap());
    assert!(want.iter().any(|r| r[1] == "warning" && r[2] == "ema"));
    let csv = csv_tables(&run_with(&args, "--csv"));
    assert_eq!(csv.len(), 1);
    assert_eq!(
        csv[0][0],
        ["file", "severity", "code", "finding", "keys", "remedy"]
    );
    assert_eq!(csv[0][1..], want[..]);
    let md = markdown_tables(&run_with(&args, "--markdown"));
    assert_eq!(md.len(), 1);
    assert_eq!(md[0][1..], want[..]);
    // The exit code does not depend on the format.
    for flag in ["--csv", "--markdown", "--json"] {
        let (code, _, _) = run_code(&[&args[..], &[flag]].concat());
        assert_eq!(code, 1, "{flag}");
    }
}

#[test]
fn fix_and_convert_tables_are_their_json_actions() {
    let dir = Dir::new();
    let heavy = heavy(&dir);
    let out = dir.path("fixed.safetensors");
    let args = words(
        "fix {} -o {} --drop-ema --force",
        &[heavy.as_str(), s(&out)],
    );
    let json = json_of(&args);
    let csv = csv_tables(&run_with(&args, "--csv"));
    assert_eq!(csv.len(), 2, "actions, then the result's findings");
    let actions: Vec<Vec<String>> = json["fix"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| vec!["fixed".to_string(), str_of(a)])
        .collect();
    assert!(!actions.is_empty());
    assert_eq!(csv[0][1..], actions[..]);
    assert_eq!(csv[1][1..], findings_of(&[json["validate"].clone()])[..]);
    let md = markdown_tables(&run_with(&args, "--markdown"));
    assert_eq!(md.len(), 2);
    assert_eq!(md[0][1..], actions[..]);

    let outs = dir.path("conv");
    let base = dir.path("base.safetensors");
    run_ok(&words(
        "synth model {} --arch sd1 --scale 32 -q",
        &[s(&base)],
    ));
    let args = words(
        "convert {} {} --out-dir {} --drop-ema --dtype f16 --force -q",
        &[heavy.as_str(), s(&base), s(&outs)],
    );
    let json = json_of(&args);
    let want: Vec<Vec<String>> = json["converted"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| vec![str_of(&c["input"]), str_of(&c["output"]), str_of(a)])
        })
        .collect();
    let csv = csv_tables(&run_with(&args, "--csv"));
    assert_eq!(csv[0][0], ["input", "output", "action"]);
    assert_eq!(csv[0][1..], want[..]);
    assert_eq!(
        markdown_tables(&run_with(&args, "--markdown"))[0][1..],
        want[..]
    );
}

#[test]
fn merge_plan_csv_names_every_input_the_terminal_shortens() {
    let dir = Dir::new();
    let fam = family(&dir);
    // Seven inputs: the terminal's table names the first and the last.
    for i in 4..=7 {
        let ft = fam.join(format!("ft{i}.safetensors"));
        std::fs::copy(fam.join(format!("ft{}.safetensors", i - 3)), ft).unwrap();
    }
    let recipe = fam.join("avg.recipe");
    std::fs::write(&recipe, "fts = glob(\"ft?.safetensors\")\nOUT = avg(fts)\n").unwrap();
    let out = dir.path("avg.safetensors");
    let args = ["merge", s(&recipe), "-o", s(&out), "--dry-run"];
    let json = json_of(&args);
    let comps = json["components"].as_array().unwrap();
    let text = run_ok(&args);
    assert!(text.contains("7 inputs: fts[1], ..., fts[7]"), "{text}");
    let csv = csv_tables(&run_with(&args, "--csv"));
    assert_eq!(
        csv[0][0],
        ["component", "reads", "method", "merged", "copied"]
    );
    assert_eq!(csv[0].len(), comps.len() + 1);
    for (row, c) in csv[0][1..].iter().zip(comps) {
        let reads: Vec<String> = c["reads"].as_array().unwrap().iter().map(str_of).collect();
        assert_eq!(reads.len(), 7);
        assert_eq!(row[0], str_of(&c["component"]));
        assert_eq!(row[1], reads.join(", "));
        assert_eq!(row[3], str_of(&c["merged"]));
        assert_eq!(row[4], str_of(&c["copied"]));
    }
    // Markdown: the plan as the terminal shows it, the table in Markdown.
    let md = markdown_tables(&run_with(&args, "--markdown"));
    assert_eq!(md[0].len(), csv[0].len());
    assert!(!out.exists(), "a dry run writes nothing");
}

#[test]
fn index_and_lineage_tables_carry_the_json_values() {
    let dir = Dir::new();
    let fam = family(&dir);
    let ix = dir.path("ix.sqlite");
    let names = ["base", "ft1", "ft2", "ft3"];
    let paths: Vec<String> = names.iter().map(|n| member(&fam, n)).collect();
    let mut add = vec!["index", "--index", s(&ix), "add", "-q"];
    add.extend(paths.iter().map(String::as_str));
    run_ok(&add);

    let ls = ["index", "--index", s(&ix), "ls"];
    let json = run_json(&ls);
    let csv = csv_tables(&run_with(&ls, "--csv"));
    let head = &csv[0][0];
    let models = json["models"].as_array().unwrap();
    assert_eq!(csv[0].len(), models.len() + 1);
    for (row, m) in csv[0][1..].iter().zip(models) {
        for (h, cell) in head.iter().zip(row) {
            assert_eq!(*cell, str_of(&m[h.as_str()]), "{h}");
        }
    }
    assert_eq!(
        markdown_tables(&run_with(&ls, "--markdown"))[0].len(),
        csv[0].len()
    );

    let stats = ["index", "--index", s(&ix), "stats"];
    let json = run_json(&stats);
    let csv = csv_tables(&run_with(&stats, "--csv"));
    assert_eq!(csv[0][0], ["models", "bytes", "bytes_per_model"]);
    assert_eq!(
        csv[0][1],
        [
            str_of(&json["models"]),
            str_of(&json["bytes"]),
            str_of(&json["bytes_per_model"])
        ]
    );
    assert_eq!(csv[1][1], ["sd1", "4"]);

    let target = member(&fam, "mbw-ft1-ft2");
    let lineage = words(
        "lineage {} --index {} --base base -q",
        &[target.as_str(), s(&ix)],
    );
    let json = run_json(&lineage);
    let csv = csv_tables(&run_with(&lineage, "--csv"));
    assert_eq!(csv.len(), 3, "nearest, recipe, explained");
    let nearest: Vec<Vec<String>> = json["nearest"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| {
            n["models"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    vec![
                        str_of(&n["row"]),
                        (i + 1).to_string(),
                        str_of(&m[0]),
                        format!("{:.3}", m[1].as_f64().unwrap()),
                    ]
                })
        })
        .collect();
    assert_eq!(csv[0][1..], nearest[..]);
    let groups = json["groups"].as_array().unwrap();
    let recipe: Vec<Vec<String>> = groups
        .iter()
        .flat_map(|g| {
            g["weights"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w[1].as_f64().unwrap() > 0.005)
                .map(|w| {
                    vec![
                        str_of(&g["group"]),
                        str_of(&w[0]),
                        format!("{:.3}", w[1].as_f64().unwrap()),
                        format!("{:.3}", w[2].as_f64().unwrap()),
                    ]
                })
        })
        .collect();
    assert_eq!(csv[1][1..], recipe[..]);
    assert!(recipe.iter().any(|r| r[1] == "ft1") && recipe.iter().any(|r| r[1] == "ft2"));
    let explained: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                str_of(&g["group"]),
                format!("{:.2}%", 100.0 * g["explained"].as_f64().unwrap()),
            ]
        })
        .collect();
    assert_eq!(csv[2][1..], explained[..]);
    // Markdown shows the terminal's two tables.
    let md = markdown_tables(&run_with(&lineage, "--markdown"));
    assert_eq!(md.len(), 2);
    assert_eq!(md[1].len(), groups.len() + 1);
}

#[test]
fn lora_and_fit_tables_carry_the_json_values() {
    let dir = Dir::new();
    let fam = family(&dir);
    let (base, ft1, ft2) = (
        member(&fam, "base"),
        member(&fam, "ft1"),
        member(&fam, "ft2"),
    );
    let lora = dir.path("ft1-r4.safetensors");
    let extract = words(
        "lora extract {} --base {} --rank 4 -o {} --force -q",
        &[ft1.as_str(), base.as_str(), s(&lora)],
    );
    let json = json_of(&extract);
    let csv = csv_tables(&run_with(&extract, "--csv"));
    let blocks: Vec<Vec<String>> = json["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| vec![str_of(&b["block"]), str_of(&b["modules"])])
        .collect();
    assert!(!blocks.is_empty());
    let got: Vec<Vec<String>> = csv[0][1..].iter().map(|r| r[..2].to_vec()).collect();
    assert_eq!(got, blocks);

    // Two LoRAs compared: the cosine per block, at the table's 6 decimals.
    let other = dir.path("ft2-r4.safetensors");
    run_ok(&words(
        "lora extract {} --base {} -o {} -q",
        &[ft2.as_str(), base.as_str(), s(&other)],
    ));
    let sim = ["sim", s(&lora), s(&other)];
    let json = run_json(&sim);
    let csv = csv_tables(&run_with(&sim, "--csv"));
    let rows = json["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert_eq!(csv[0].len(), rows.len() + 2, "header, rows, total");
    for (row, r) in csv[0][1..].iter().zip(rows) {
        assert_eq!(row[0], str_of(&r["block"]));
        assert_eq!(row[1], format!("{:.6}", r["cosine"].as_f64().unwrap()));
    }
    let md = markdown_tables(&run_with(&sim, "--markdown"));
    assert_eq!(md[0], csv[0]);
    // ‖ΔW‖ per block of each LoRA, then the distances between them.
    let l2 = ["l2", "--base", base.as_str(), s(&lora), s(&other)];
    let csv = csv_tables(&run_with(&l2, "--csv"));
    assert_eq!(csv.len(), 2);
    assert_eq!(markdown_tables(&run_with(&l2, "--markdown")), csv);

    // fit: the steps' expressions and similarities.
    let target = member(&fam, "ws-ft1-ft2");
    let fit = words(
        "fit --target {} --base {} --sources {} {} --max-steps 2 -q",
        &[target.as_str(), base.as_str(), ft1.as_str(), ft2.as_str()],
    );
    let json = run_json(&fit);
    let csv = csv_tables(&run_with(&fit, "--csv"));
    assert_eq!(csv.len(), 2, "steps, rows");
    let steps = json["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    assert_eq!(
        csv[0].len(),
        steps.len() + 2,
        "header, the start, the steps"
    );
    for (row, st) in csv[0][2..].iter().zip(steps) {
        assert_eq!(row[1], str_of(&st["expression"]));
        assert_eq!(
            row[3],
            format!("{:.6}%", 100.0 * st["objective"].as_f64().unwrap())
        );
    }
    assert_eq!(csv[1].len(), json["rows"].as_array().unwrap().len() + 1);
}
