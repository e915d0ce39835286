//! `--quant TYPE` and `.gguf` outputs, shared by `convert` and `merge`.

use std::path::Path;

use anyhow::{Result, bail};

use ckpt_ops::gguf::Quant;

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

/// The GGUF choice for `output`: `Some(None)` for a `.gguf` file without `--quant`
/// (F16/BF16 as city96's convert.py writes), `Some(q)` with it; `None` for another file,
/// where `--quant` is an error.
pub(super) fn choice(output: &Path, quant: Option<Quant>) -> Result<Option<Option<Quant>>> {
    if is_gguf(output) {
        return Ok(Some(quant));
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
    Ok(None)
}
