//! Provenance written into a merged file's `__metadata__`, so web UIs, Civitai and
//! `ckpt-diff inspect` show where it came from.
//!
//! * `ckpt_diff.recipe`: the recipe text as written.
//! * `sd_merge_recipe`: a JSON string (`type: "ckpt-diff"`, the recipe, the inputs' hashes,
//!   dtype and precision).
//! * `sd_merge_models`: the A1111 ancestry map `{sha256: {name, legacy_hash,
//!   sd_merge_recipe}}`, merged with every input's own `sd_merge_models`, so the whole tree
//!   of merges accumulates as it does in the A1111 merger.
//! * `format: pt`.
//!
//! Full-file SHA-256 of the inputs is computed while the merge runs; until then the header
//! holds a placeholder of the same length, patched in place at the end.

use serde_json::{Map, Value, json};

/// What the metadata says about one input.
pub(crate) struct InputInfo {
    pub name: String,
    pub file: String,
    /// The file's SHA-256, or a same-length placeholder, or `None` when not computed.
    pub sha256: Option<String>,
    pub legacy_hash: String,
    /// The input's own `sd_merge_recipe` and `sd_merge_models`, if it has them.
    pub own_recipe: Option<String>,
    pub own_models: Option<String>,
}

/// A placeholder as long as a SHA-256 hex digest, unique per input.
pub(crate) fn placeholder(i: usize) -> String {
    format!("{:@<64}", format!("@@ckpt-diff-sha256-of-input-{i}"))
}

/// The metadata entries, in a fixed order.
pub(crate) fn build(
    recipe_text: &str,
    inputs: &[InputInfo],
    dtype: &str,
    precision: &str,
) -> Vec<(String, String)> {
    let models: Map<String, Value> = inputs
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                json!({ "file": i.file, "sha256": i.sha256, "legacy_hash": i.legacy_hash }),
            )
        })
        .collect();
    let recipe = json!({
        "type": "ckpt-diff",
        "version": env!("CARGO_PKG_VERSION"),
        "recipe": recipe_text,
        "models": models,
        "dtype": dtype,
        "precision": precision,
    });
    let mut ancestry = Map::new();
    for i in inputs {
        // The inputs' own ancestry first, so each direct parent's entry wins.
        if let Some(own) = i
            .own_models
            .as_deref()
            .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
        {
            for (k, v) in own {
                ancestry.insert(k, v);
            }
        }
    }
    for i in inputs {
        if let Some(h) = &i.sha256 {
            let parent_recipe = i
                .own_recipe
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .unwrap_or(Value::Null);
            ancestry.insert(h.clone(), json!({ "name": i.file, "legacy_hash": i.legacy_hash, "sd_merge_recipe": parent_recipe }));
        }
    }
    vec![
        ("format".into(), "pt".into()),
        ("ckpt_diff.recipe".into(), recipe_text.to_string()),
        ("sd_merge_recipe".into(), recipe.to_string()),
        (
            "sd_merge_models".into(),
            Value::Object(ancestry).to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_accumulates() {
        let grandparent = json!({ "aaaa": { "name": "g.safetensors", "legacy_hash": "11111111", "sd_merge_recipe": null } }).to_string();
        let inputs = vec![
            InputInfo {
                name: "A".into(),
                file: "a.safetensors".into(),
                sha256: Some("bbbb".into()),
                legacy_hash: "22222222".into(),
                own_recipe: Some("{\"type\":\"webui\"}".into()),
                own_models: Some(grandparent),
            },
            InputInfo {
                name: "B".into(),
                file: "b.safetensors".into(),
                sha256: None,
                legacy_hash: "33333333".into(),
                own_recipe: None,
                own_models: None,
            },
        ];
        let md = build("OUT = A x 0.5 + B x 0.5", &inputs, "F16", "f64");
        let models: Value = serde_json::from_str(&md[3].1).unwrap();
        assert_eq!(models["aaaa"]["name"], "g.safetensors");
        assert_eq!(models["bbbb"]["sd_merge_recipe"]["type"], "webui");
        assert_eq!(models.as_object().unwrap().len(), 2);
        let recipe: Value = serde_json::from_str(&md[2].1).unwrap();
        assert_eq!(recipe["models"]["B"]["sha256"], Value::Null);
        assert_eq!(placeholder(3).len(), 64);
    }
}
