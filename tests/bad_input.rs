//! Every kind of bad input gets a message that names the file and the problem, exit code 2,
//! and never a panic.

use std::path::{Path, PathBuf};

use crate::util::*;

fn file_with_header(d: &Dir, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    let p = d.path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs `inspect` and `sim` on the file; both must fail with code 2 and say `needle`.
fn refused(p: &Path, needle: &str) {
    let d = Dir::new();
    let good = file_with_header(
        &d,
        "good.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0, 0, 128, 63],
    );
    for args in [vec!["inspect", s(p)], vec!["sim", s(&good), s(p)]] {
        let out = ckpt_diff().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(p.file_name().unwrap().to_str().unwrap()),
            "{args:?} names the file: {err}"
        );
        assert!(err.contains(needle), "{args:?} says '{needle}': {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn test_missing_file() {
    let d = Dir::new();
    refused(&d.path("nope.safetensors"), "No such file");
}

#[test]
fn test_truncated_file() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "cut.safetensors",
        r#"{"a":{"dtype":"F16","shape":[1000],"data_offsets":[0,2000]}}"#,
        &[0u8; 999],
    );
    refused(&p, "truncated");
}

#[test]
fn test_truncated_header() {
    let d = Dir::new();
    let p = d.path("short.safetensors");
    let mut bytes = 500u64.to_le_bytes().to_vec();
    bytes.extend(b"{\"a\":");
    std::fs::write(&p, bytes).unwrap();
    refused(&p, "truncated");
}

#[test]
fn test_empty_file() {
    let d = Dir::new();
    let p = d.path("empty.safetensors");
    std::fs::write(&p, b"").unwrap();
    refused(&p, "too short");
}

#[test]
fn test_bad_header_json() {
    let d = Dir::new();
    let p = file_with_header(&d, "json.safetensors", "{\"a\": [1, 2,", &[]);
    refused(&p, "not valid JSON");
}

#[test]
fn test_header_too_large() {
    let d = Dir::new();
    let p = d.path("huge.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&p, bytes).unwrap();
    refused(&p, "more than the");
}

#[test]
fn test_overlapping_offsets() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "overlap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0u8; 12],
    );
    refused(&p, "share bytes");
}

#[test]
fn test_wrong_shape_for_its_bytes() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "shape.safetensors",
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &[0u8; 8],
    );
    refused(&p, "needs 12 bytes");
}

#[test]
fn test_duplicate_tensor_name() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "dup.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0u8; 8],
    );
    refused(&p, "twice");
}

#[test]
fn test_unknown_dtype() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "q4.safetensors",
        r#"{"a":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,4]}}"#,
        &[0u8; 4],
    );
    refused(&p, "Q4_K");
}

#[test]
fn test_damaged_or_foreign_pickles_are_refused() {
    let d = Dir::new();
    let zip = d.path("model.ckpt");
    std::fs::write(
        &zip,
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pklPK",
    )
    .unwrap();
    refused(&zip, "zip container is unreadable");
    // A protocol-2 pickle with a .pt name, and an old protocol-0 pickle that only the
    // extension gives away: pickles, but not torch checkpoints.
    let legacy = d.path("legacy.pt");
    std::fs::write(
        &legacy,
        b"\x80\x02}q\x00(X\x05\x00\x00\x00epochq\x01K\x00u.",
    )
    .unwrap();
    refused(&legacy, "not a torch checkpoint");
    let proto0 = d.path("old.ckpt");
    std::fs::write(&proto0, b"(dp0\nS'state_dict'\np1\n(dp2\ns.").unwrap();
    refused(&proto0, "not a torch checkpoint");
}

#[test]
fn test_directory_instead_of_file() {
    let d = Dir::new();
    let p = d.path("folder.safetensors");
    std::fs::create_dir(&p).unwrap();
    refused(&p, "directory");
}

#[test]
fn usage_errors_exit_2() {
    let out = ckpt_diff()
        .args(["sim", "only-one.safetensors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "ok.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0u8; 4],
    );
    let out = ckpt_diff()
        .args(["sim", s(&p), s(&p), "--keys", "("])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keys"));
    let out = ckpt_diff()
        .args(["sim", s(&p), s(&p), "--blocks", "sideways"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sideways"));
    // --paths-from belongs to --text: with a recipe file it is refused, not ignored.
    let recipe = d.path("r.recipe");
    std::fs::write(&recipe, format!("A = \"{}\"\nOUT = A x 1\n", s(&p))).unwrap();
    let out = ckpt_diff()
        .args(["merge", s(&recipe), "--paths-from", s(&d.path("")), "-o"])
        .arg(d.path("out.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--paths-from goes with --text"));
    assert!(!d.path("out.safetensors").exists());
    // A recipe in both places is ambiguous: refused.
    let out = ckpt_diff()
        .args(["merge", s(&recipe), "--text", "OUT = A x 1", "-o"])
        .arg(d.path("out.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Ctrl-C in the middle of writing: exit 130 and the temporary file is gone. The command
/// holds at a known point (after its first written bytes, see `CKPT_DIFF_HOLD_AFTER_BYTES`)
/// and says so; the signal comes then, not after a guessed delay.
#[cfg(unix)]
#[test]
fn interrupt_exits_130_and_leaves_no_temporary_file() {
    use std::io::{BufRead, BufReader};
    let d = Dir::new();
    let out = d.path("small.safetensors");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt-diff"))
        .args(["synth", "model", s(&out), "--scale", "16"])
        .env(ckpt_read::env::HOLD_AFTER_BYTES.name, "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let holding = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains(ckpt_core::pass::HOLDING));
    assert!(holding, "the command never reached its hold point");
    // The temporary file exists now, partly written.
    let during: Vec<_> = std::fs::read_dir(d.dir.path()).unwrap().collect();
    assert_eq!(during.len(), 1, "one temporary file while writing");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let left: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Forge's NF4 Flux: 4-bit codes in uint8 with a bitsandbytes record; refused by name.
#[test]
fn test_bitsandbytes_nf4_refused() {
    let d = Dir::new();
    let p = file_with_header(
        &d,
        "flux1-dev-bnb-nf4.safetensors",
        r#"{"model.diffusion_model.img_in.weight":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"model.diffusion_model.img_in.weight.absmax":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"model.diffusion_model.img_in.weight.quant_state.bitsandbytes__nf4":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#,
        &[0; 12],
    );
    refused(&p, "bitsandbytes NF4");
}

/// A scaled-FP8 file whose scale is not a finite positive float would give wrong weights.
#[test]
fn test_bad_fp8_scale_refused() {
    let d = Dir::new();
    for (name, scale) in [("neg", -1.0f32), ("nan", f32::NAN), ("zero", 0.0)] {
        let mut data = vec![0x38u8; 4];
        data.extend(scale.to_le_bytes());
        let p = file_with_header(
            &d,
            &format!("scaled-{name}.safetensors"),
            r#"{"model.diffusion_model.scaled_fp8":{"dtype":"F8_E4M3","shape":[0],"data_offsets":[0,0]},"model.diffusion_model.img_in.weight":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]},"model.diffusion_model.img_in.scale_weight":{"dtype":"F32","shape":[],"data_offsets":[4,8]}}"#,
            &data,
        );
        refused(&p, "scale_weight");
    }
}

/// Every environment variable `ckpt_read::env` declares is on the docs page that lists them.
#[test]
fn every_environment_variable_is_documented() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/environment.md"),
    )
    .expect("docs/environment.md");
    for v in ckpt_read::env::ALL {
        assert!(
            page.contains(&format!("| `{}` |", v.name)),
            "docs/environment.md does not list {}",
            v.name
        );
    }
}
