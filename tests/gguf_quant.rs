//! The GGUF quantizers (`ckpt_read::gguf::quantize`, issue #27) against their oracles
//! (`fixtures/gguf-quant/`, made by `make_goldens.py`): gguf-py 0.19.0's bytes for F16, BF16
//! and the legacy types, llama.cpp's bytes for the K and IQ4 types, on awkward
//! rows (zeros, tiny, subnormal, huge, one-signed, constant, outliers, ties, non-finite) and
//! on a [256, 3072] tensor of Gaussian-like weights with outliers that the test generates as
//! the script does (its goldens are FNV-1a hashes per row); plus the closed-form error bound
//! of the symmetric legacy types, decoded from the layout (not by the crate).

use std::collections::BTreeMap;
use std::path::Path;

use ckpt_read::gguf::GgmlType;
use ckpt_read::gguf::quantize::{QuantizeError, quantize};

const ROW: usize = 256;

/// The float and legacy types (gguf-py's bytes), and the K and IQ4 types (llama.cpp's).
const LEGACY: [GgmlType; 7] = [
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q4_0,
];
const LLAMA_CPP: [GgmlType; 7] = [
    GgmlType::Q6K,
    GgmlType::Q5K,
    GgmlType::Q4K,
    GgmlType::Q3K,
    GgmlType::Q2K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

/// Every tensor of `goldens.safetensors` as raw little-endian bytes, by name.
fn goldens() -> &'static BTreeMap<String, Vec<u8>> {
    static GOLDENS: std::sync::OnceLock<BTreeMap<String, Vec<u8>>> = std::sync::OnceLock::new();
    GOLDENS.get_or_init(|| {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf-quant/goldens.safetensors");
        let bytes = std::fs::read(&path).expect("read the goldens");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        st.tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect()
    })
}

fn golden(name: &str) -> &'static [u8] {
    goldens()
        .get(name)
        .unwrap_or_else(|| panic!("no golden {name}: rerun make_goldens.py"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn quantized(t: GgmlType, src: &[f32]) -> Vec<u8> {
    let mut dst = vec![0u8; t.bytes_for(src.len()).expect("whole blocks")];
    quantize(t, src, &mut dst).expect("quantize");
    dst
}

/// Asserts `got` equals `want` block by block, naming the first blocks that differ.
fn same_blocks(what: &str, t: GgmlType, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what} {}: length", t.name());
    let size = t.type_size();
    let differing: Vec<usize> = got
        .chunks(size)
        .zip(want.chunks(size))
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = differing.first() {
        let block = |b: &[u8]| b[first * size..(first + 1) * size].to_vec();
        panic!(
            "{what} {}: {} of {} blocks differ, the first is block {first} (row {}):\n got  {:02x?}\n want {:02x?}",
            t.name(),
            differing.len(),
            got.len() / size,
            first * t.block_size() / ROW,
            block(got),
            block(want),
        );
    }
}

#[test]
fn legacy_types_equal_gguf_py_bit_for_bit() {
    let awkward = f32s(golden("awkward"));
    let nonfinite = f32s(golden("nonfinite"));
    for t in LEGACY {
        let name = t.name();
        same_blocks(
            "awkward",
            t,
            &quantized(t, &awkward),
            golden(&format!("awkward.{name}")),
        );
        same_blocks(
            "nonfinite",
            t,
            &quantized(t, &nonfinite),
            golden(&format!("nonfinite.{name}")),
        );
    }
}

#[test]
fn k_and_iq4_types_equal_llama_cpp_on_awkward_rows() {
    let awkward = f32s(golden("awkward"));
    for t in LLAMA_CPP {
        let want = golden(&format!("awkward.{}", t.name()));
        same_blocks("awkward", t, &quantized(t, &awkward), want);
    }
}

/// splitmix64's output mix (`make_goldens.py` `splitmix64`).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `make_goldens.py` `weights()`: [rows, cols] Gaussian-like values with outliers, made of
/// integers, exact conversions and single IEEE roundings, so both sides get the same f32s.
fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    const SCALES: [f32; 4] = [0.02, 0.05, 0.01, 0.1];
    let g = 0x9E37_79B9_7F4A_7C15u64;
    let draw = |e: u64, k: u64| splitmix64(seed.wrapping_add((5 * e + k + 1).wrapping_mul(g)));
    (0..rows * cols)
        .map(|i| {
            let e = i as u64;
            let s: i64 = (0..4).map(|k| (draw(e, k) >> 40) as i64).sum();
            let v = (s - (1 << 25)) as f32 * 2f32.powi(-24) * SCALES[(i / cols) % 4];
            if draw(e, 4) % 997 == 0 { v * 24.0 } else { v }
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

#[test]
fn every_type_equals_its_oracle_on_gaussian_weights() {
    let (rows, cols) = (256, 3072);
    let w = weights(rows, cols, 27);
    for t in LEGACY.into_iter().chain(LLAMA_CPP) {
        let want: Vec<u64> = golden(&format!("weights.{}", t.name()))
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got: Vec<u64> = w
            .chunks(cols)
            .map(|row| fnv1a(&quantized(t, row)))
            .collect();
        let equal = got.iter().zip(&want).filter(|(g, w)| g == w).count();
        assert_eq!(
            equal,
            rows,
            "{}: {equal} of {rows} rows equal the oracle's",
            t.name()
        );
    }
}

/// The closed form of the symmetric types, decoded from the block layout alone: a code rounds
/// `x / d` (d = amax / 127 for Q8_0, max / -8 and / -16 for Q4_0 and Q5_0, in f32), the block
/// stores f16(d), so |x - q f16(d)| <= |d| / 2 + qmax |d - f16(d)| (plus f32 rounding);
/// Q4_0 and Q5_0 clip the code at the end opposite to max, which costs up to one more step.
#[test]
fn symmetric_types_keep_the_error_within_half_a_step() {
    let w = weights(16, 3072, 5);
    for (t, qmax, zero) in [
        (GgmlType::Q8_0, 127.0, 0),
        (GgmlType::Q5_0, 16.0, 16),
        (GgmlType::Q4_0, 8.0, 8),
    ] {
        let bytes = quantized(t, &w);
        for (x, block) in w.chunks(32).zip(bytes.chunks(t.type_size())) {
            let d16 = half::f16::from_le_bytes([block[0], block[1]]).to_f64();
            let (codes, d): (Vec<i32>, f64) = match t {
                GgmlType::Q8_0 => {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    (
                        block[2..].iter().map(|&b| i32::from(b as i8)).collect(),
                        f64::from(amax / 127.0),
                    )
                }
                _ => {
                    let max = x
                        .iter()
                        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let (qh, qs) = if t == GgmlType::Q5_0 {
                        (
                            u32::from_le_bytes(block[2..6].try_into().unwrap()),
                            &block[6..],
                        )
                    } else {
                        (0, &block[2..])
                    };
                    let codes = (0..32)
                        .map(|e| {
                            let low = if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 };
                            i32::from(low) | ((((qh >> e) & 1) as i32) << 4)
                        })
                        .map(|q| q - zero)
                        .collect();
                    (codes, f64::from(max / -(qmax as f32)))
                }
            };
            // Q4_0/Q5_0 codes stop at qmax - 1 on the side away from max.
            let clip = if t == GgmlType::Q8_0 { 0.0 } else { d.abs() };
            let bound = d.abs() / 2.0 + qmax * (d - d16).abs() + clip + d.abs() * 1e-6;
            for (&v, &q) in x.iter().zip(&codes) {
                let err = (f64::from(v) - f64::from(q) * d16).abs();
                assert!(
                    err <= bound,
                    "{}: {v} decodes to {} (d {d16}), error {err} > {bound}",
                    t.name(),
                    f64::from(q) * d16
                );
            }
        }
    }
}

#[test]
fn f32_is_copied_and_sizes_are_checked() {
    let x = [1.5f32, -0.0, f32::MIN_POSITIVE, f32::NAN];
    let bytes = quantized(GgmlType::F32, &x);
    assert_eq!(
        bytes,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
    );

    let mut dst = vec![0u8; 34];
    assert!(matches!(
        quantize(GgmlType::Q8_0, &[0.0; 33], &mut dst),
        Err(QuantizeError::NotWholeBlocks {
            len: 33,
            block: 32,
            ..
        })
    ));
    assert!(matches!(
        quantize(GgmlType::Q8_0, &[0.0; 64], &mut dst),
        Err(QuantizeError::WrongOutputSize {
            want: 68,
            got: 34,
            ..
        })
    ));
}

/// Single-thread speed per type, in MB/s of f32 input:
/// `cargo test --release --test tests gguf_quant::quantize_speed -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn quantize_speed() {
    let w = weights(256, 3072, 27);
    let mb = (w.len() * 4) as f64 / 1e6;
    for t in [GgmlType::F16, GgmlType::Bf16]
        .into_iter()
        .chain(LEGACY[2..].iter().copied())
        .chain(LLAMA_CPP)
    {
        let mut dst = vec![0u8; t.bytes_for(w.len()).unwrap()];
        let start = std::time::Instant::now();
        let mut runs = 0;
        while start.elapsed().as_secs_f64() < 1.0 {
            quantize(t, &w, &mut dst).unwrap();
            runs += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{:5} {:8.1} MB/s", t.name(), mb * runs as f64 / secs);
    }
}
