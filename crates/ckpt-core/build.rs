//! Compiles every file under `src/catalog/data/` into the crate, so that adding an
//! architecture is adding its data files: `catalog::spec` finds them by name. Generates
//! `$OUT_DIR/catalog_files.rs`: `FILES`, (path under `data/`, text) in path order.

use std::path::{Path, PathBuf};

fn main() {
    // The manifest folder as cargo gives it when it runs the script (not `env!`, which would
    // fix the folder the script was compiled for: another checkout sharing the target
    // folder would embed that one's data).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let data = Path::new(&manifest).join("src/catalog/data");
    println!("cargo:rerun-if-changed={}", data.display());
    let mut files = Vec::new();
    collect(&data, &mut files);
    files.sort();
    let mut out = String::from(
        "/// Every data file: (its path under `data/`, its text), in path order.\n\
         pub(crate) static FILES: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        let name = f
            .strip_prefix(&data)
            .expect("under data/")
            .to_string_lossy()
            .replace('\\', "/");
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("catalog_files.rs");
    std::fs::write(dest, out).expect("write catalog_files.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the data folder")
        .map(|e| e.expect("a folder entry").path())
        .collect();
    entries.sort();
    for p in entries {
        println!("cargo:rerun-if-changed={}", p.display());
        if p.is_dir() {
            collect(&p, files);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("tsv" | "toml")) {
            files.push(p);
        }
    }
}
