//! `--quant TYPE` and `.gguf` outputs, shared by `convert` and `merge`.

use std::path::Path;

use anyhow::{Result, bail};

use ckpt_ops::gguf::{GgufOptions, Quant};

/// `--quant`'s value parser: a name [`Quant::parse`] takes, else the list of valid ones.
pub(super) fn parse_quant(s: &str) -> Result<Quant, String> {
    Quant::parse(s).ok_or_else(|| {
        format!(
            "'{s}' is not a GGUF type ckpt-diff writes; use one of {}",
            Quant::names().join(", ")
        )
    })
}

/// Whether `path` names a GGUF file (by its extension).
pub(super) fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The GGUF choice for `output`: `Some` for a `.gguf` file (`quant` `None`: F16/BF16 as
/// city96's convert.py writes); `None` for another file, where `--quant` and
/// `--allow-long-names` are errors.
pub(super) fn choice(
    output: &Path,
    quant: Option<Quant>,
    long_names: bool,
) -> Result<Option<GgufOptions>> {
    if is_gguf(output) {
        return Ok(Some(GgufOptions { quant, long_names }));
    }
    if let Some(q) = quant {
        bail!(
            "--quant {} writes GGUF, but '{}' is not a .gguf file; name a .gguf output \
             (e.g. -o model-{}.gguf)",
            q.name(),
            output.display(),
            q.name()
        );
    }
    if long_names {
        bail!(
            "--allow-long-names is for GGUF outputs, and '{}' is not a .gguf file",
            output.display()
        );
    }
    Ok(None)
}
