//! The merge registry's methods applied to LoRAs' changes: `lora merge --method ties`
//! (ComfyUI-Manager #2440's "Z-Fuse": several LoRAs into one by TIES) merges each module's
//! ΔWᵢ = ratioᵢ · scaleᵢ · upᵢ·downᵢ as the method merges models, with the base the zero
//! change, and the result is re-ranked by SVD like a summed change.
//!
//! The methods are the registry's own (`merge::methods`), not copies: a module's changes are
//! handed to them through [`TensorInputs`], the view the merge engine gives them of a
//! tensor's inputs. Those that take a base merge the changes against zero (`ties`, `tgmd`,
//! `dare`, `dare_ties`); `geomedian` takes the changes as its models. Options are the
//! method's scalars and words (`k=0.3`, `vote=count`); its per-model `weights` are the
//! LoRAs' ratios, which already scale each change, and block weights do not apply.
//!
//! Memory: a module's changes in f64, one per LoRA that has the module (N × rows × cols),
//! plus what the method keeps for one tensor; modules are merged one at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::merge::methods::{self, Args, Build, Method, NodeMethod, OptKind, TensorInputs, Value};

/// The methods that make sense on changes, and whether their first argument is the base.
const ON_CHANGES: [(&str, bool); 5] = [
    ("ties", true),
    ("tgmd", true),
    ("dare", true),
    ("dare_ties", true),
    ("geomedian", false),
];

/// A registry method with its options, built for each number of changes it meets.
pub struct DeltaMethod {
    method: &'static Method,
    base: bool,
    options: Vec<(String, String)>,
    built: Mutex<HashMap<usize, Arc<dyn NodeMethod>>>,
}

impl std::fmt::Debug for DeltaMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaMethod")
            .field("method", &self.method.name)
            .field("options", &self.options)
            .finish()
    }
}

/// The names `--method` takes.
pub fn names() -> Vec<&'static str> {
    ON_CHANGES.iter().map(|(n, _)| *n).collect()
}

impl DeltaMethod {
    /// `name` with `options` (`key`, `value` text), checked by building it.
    pub fn new(name: &str, options: &[(String, String)]) -> Result<DeltaMethod, String> {
        let Some(&(_, base)) = ON_CHANGES.iter().find(|(n, _)| *n == name) else {
            return Err(format!(
                "`{name}` is not a method for LoRA changes (one of: {})",
                names().join(", ")
            ));
        };
        let method = methods::REGISTRY
            .iter()
            .find(|m| m.name == name)
            .expect("every ON_CHANGES name is in the registry");
        for (key, _) in options {
            if !method.options.iter().any(|o| o.name == key) {
                return Err(format!("`{name}` has no option `{key}` ({})", method.usage));
            }
        }
        let m = DeltaMethod {
            method,
            base,
            options: options.to_vec(),
            built: Mutex::new(HashMap::new()),
        };
        m.node(2)?;
        Ok(m)
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.method.name
    }

    /// The method built for `changes` changes (plus the zero base when it takes one).
    fn node(&self, changes: usize) -> Result<Arc<dyn NodeMethod>, String> {
        if let Some(n) = self.built.lock().expect("not poisoned").get(&changes) {
            return Ok(n.clone());
        }
        let models = changes + usize::from(self.base);
        let mut values: Vec<(&'static str, Value)> = Vec::new();
        for opt in self.method.options {
            let given = self
                .options
                .iter()
                .find(|(k, _)| k == opt.name)
                .map(|(_, v)| v.as_str());
            let value = match (opt.kind, given) {
                (OptKind::Scalar, Some(text)) => {
                    let v: f64 = text
                        .parse()
                        .map_err(|_| format!("`{}` takes a number, not `{text}`", opt.name))?;
                    if !opt.range.admits(v) {
                        return Err(opt.range.explain(opt.name));
                    }
                    Value::Scalar(v)
                }
                (OptKind::Choice(words), Some(text)) => match words.iter().find(|w| **w == text) {
                    Some(w) => Value::Word(w),
                    None => {
                        return Err(format!("`{}` is one of: {}", opt.name, words.join(", ")));
                    }
                },
                (_, Some(_)) => {
                    return Err(format!(
                        "`{}` is not an option of `lora merge` (each LoRA's ratio weighs its \
                         change; block weights do not apply)",
                        opt.name
                    ));
                }
                (_, None) => opt
                    .default_value(models, 1)
                    .ok_or_else(|| format!("`{}` needs `{}`", self.name(), opt.name))?,
            };
            values.push((opt.name, value));
        }
        let args = Args {
            models,
            rows: 1,
            values: &values,
        };
        let node = match self.method.build {
            Build::Node { build, .. } => build(&args).map_err(|e| e.to_string())?,
            _ => unreachable!("ON_CHANGES methods are node methods"),
        };
        self.built
            .lock()
            .expect("not poisoned")
            .insert(changes, node.clone());
        Ok(node)
    }

    /// The merged change of module `key` (`[rows, cols]`) from its `changes` (each
    /// `rows · cols` values, row-major).
    pub fn apply(
        &self,
        key: &str,
        shape: [usize; 2],
        changes: &[Vec<f64>],
    ) -> Result<Vec<f64>, String> {
        let node = self.node(changes.len())?;
        let t = Changes {
            key,
            shape: shape.to_vec(),
            base: self.base,
            changes,
        };
        let prepared = node.prepare(&t);
        let mut out = Vec::with_capacity(shape[0] * shape[1]);
        methods::sweep(&t, |s, e| out.extend(node.eval(&t, &prepared, s, e)));
        Ok(out)
    }
}

/// One module's changes as a method's tensor inputs: argument 0 the zero base (when the
/// method takes one), then the changes.
struct Changes<'a> {
    key: &'a str,
    shape: Vec<usize>,
    base: bool,
    changes: &'a [Vec<f64>],
}

impl TensorInputs for Changes<'_> {
    fn key(&self) -> &str {
        self.key
    }

    fn row(&self) -> usize {
        0
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn range(&self) -> std::ops::Range<usize> {
        0..self.shape.iter().product()
    }

    fn input(&self, arg: usize, start: usize, end: usize) -> Vec<f64> {
        match (self.base, arg) {
            (true, 0) => vec![0.0; end - start],
            (true, i) => self.changes[i - 1][start..end].to_vec(),
            (false, i) => self.changes[i][start..end].to_vec(),
        }
    }
}
