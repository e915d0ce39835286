//! The GGUF quantizers: f32 values in, ggml blocks out (issue #27).
//!
//! [`quantize`] encodes a whole number of blocks of one [`GgmlType`]. It is single-threaded,
//! pure and allocates nothing (each block works on the stack), so a writer parallelises over
//! rows and calls it once per row. The block encoders live in `legacy` (gguf-py's types),
//! `kquant` (Q2_K..Q6_K) and `iq4` (IQ4_NL, IQ4_XS); this file checks sizes and dispatches.
//!
//! Two oracles fix the bytes, both checked by `tests/gguf_quant.rs` on
//! `fixtures/gguf-quant/`:
//!
//! * F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 equal gguf-py 0.19.0's `gguf.quants.quantize` bit
//!   for bit, its float operations in its order: the scale from the block's extreme (`max / -8`
//!   for Q4_0, `(max - min) / 15` for Q4_1, `amax / 127` for Q8_0), its inverse (0 when the
//!   scale is 0), then `trunc(x * id + 8.5)` (Q4_0, Q5_0 with 16.5), `trunc((x - min) * id + 0.5)`
//!   (Q4_1, Q5_1) or `np_roundf(x * id)` (round half away from zero, Q8_0), the cast to a byte
//!   as numpy does it on x86-64 (NaN and |v| >= 2^31 give 0, else the low byte of the integer
//!   part), clipped to the code range; scales stored as f16 rounded to nearest even.
//! * Q2_K..Q6_K follow llama.cpp's reference quantizers (`quantize_row_qN_K_ref` in
//!   `ggml/src/ggml-quants.c`, no importance matrix): per sub-block a least-squares scale
//!   (`make_qx_quants` for Q6_K, `make_q3_quants` for Q3_K, the scale-and-min search
//!   `make_qkx2_quants` for Q2_K, Q4_K, Q5_K), the sub-block scales quantized to 4, 6 or 8 bits
//!   against one f16 super-block scale, then every value requantized with the stored scales.
//!   The f32 operations run in the reference's order and Rust never fuses a multiply-add, so
//!   the bytes equal the reference's built without FMA contraction (x86-64 baseline `gcc -O2`).
//!
//! IQ4_NL and IQ4_XS follow llama.cpp's `quantize_iq4_nl` / `quantize_iq4_xs` (what
//! llama-quantize writes without an importance matrix), checked the same way.
//!
//! NaN policy: no input panics. For F16, BF16 and the legacy types a quiet NaN gives gguf-py's
//! bytes; the K and IQ4 types promise nothing about blocks holding NaN or infinities.
//!
//! ```
//! use ckpt_read::gguf::{quantize::quantize, GgmlType};
//!
//! let src: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
//! let mut dst = vec![0u8; GgmlType::Q8_0.bytes_for(src.len()).unwrap()];
//! quantize(GgmlType::Q8_0, &src, &mut dst).unwrap();
//! assert_eq!(dst.len(), 68);
//! ```

use half::f16;

mod iq4;
mod kquant;
mod legacy;

use super::GgmlType;
use iq4::{iq4_nl_block, iq4_xs_block};
use kquant::{q2_k_block, q3_k_block, q4_k_block, q5_k_block, q6_k_block};
use legacy::{q4_0_block, q4_1_block, q5_0_block, q5_1_block, q8_0_block};

/// Why [`quantize`] refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantizeError {
    /// The input is not a whole number of the type's blocks.
    #[error("{len} values are not a whole number of {ty} blocks of {block}")]
    NotWholeBlocks {
        /// The type asked for (its ggml name).
        ty: &'static str,
        /// Values given.
        len: usize,
        /// Values per block.
        block: usize,
    },
    /// The output buffer does not have the size the input needs.
    #[error("{ty} of {len} values takes {want} bytes, the output has {got}")]
    WrongOutputSize {
        /// The type asked for (its ggml name).
        ty: &'static str,
        /// Values given.
        len: usize,
        /// Bytes the blocks take.
        want: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Encodes `src` (a whole number of `t`'s blocks) into `dst` (exactly `t.bytes_for(src.len())`
/// bytes), in the layout a GGUF tensor of type `t` stores.
pub fn quantize(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantizeError> {
    let want = t
        .bytes_for(src.len())
        .ok_or(QuantizeError::NotWholeBlocks {
            ty: t.name(),
            len: src.len(),
            block: t.block_size(),
        })?;
    if dst.len() != want {
        return Err(QuantizeError::WrongOutputSize {
            ty: t.name(),
            len: src.len(),
            want,
            got: dst.len(),
        });
    }
    match t {
        GgmlType::F32 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 4]| {
            *y = x[0].to_le_bytes()
        }),
        GgmlType::F16 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = f16::from_f32(x[0]).to_le_bytes()
        }),
        GgmlType::Bf16 => each_block(src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = bf16_bits(x[0]).to_le_bytes()
        }),
        GgmlType::Q8_0 => each_block(src, dst, q8_0_block),
        GgmlType::Q4_0 => each_block(src, dst, q4_0_block),
        GgmlType::Q4_1 => each_block(src, dst, q4_1_block),
        GgmlType::Q5_0 => each_block(src, dst, q5_0_block),
        GgmlType::Q5_1 => each_block(src, dst, q5_1_block),
        GgmlType::Q2K => each_block(src, dst, q2_k_block),
        GgmlType::Q3K => each_block(src, dst, q3_k_block),
        GgmlType::Q4K => each_block(src, dst, q4_k_block),
        GgmlType::Q5K => each_block(src, dst, q5_k_block),
        GgmlType::Q6K => each_block(src, dst, q6_k_block),
        GgmlType::Iq4Nl => each_block(src, dst, iq4_nl_block),
        GgmlType::Iq4Xs => each_block(src, dst, iq4_xs_block),
    }
    Ok(())
}

/// Runs `encode` on each block of `N` values and its `B` output bytes (the lengths are
/// checked by the caller).
fn each_block<const N: usize, const B: usize>(
    src: &[f32],
    dst: &mut [u8],
    mut encode: impl FnMut(&[f32; N], &mut [u8; B]),
) {
    let (blocks, _) = src.as_chunks::<N>();
    let (outs, _) = dst.as_chunks_mut::<B>();
    for (x, y) in blocks.iter().zip(outs) {
        encode(x, y);
    }
}

// ----------------------------------------------------------------------------------------
// Float casts

/// ggml's and gguf-py's f32 -> bf16: a NaN made quiet (sign and top 7 mantissa bits kept, bit
/// 6 set), everything else rounded to nearest even on the bits (so a value past the largest
/// bf16 becomes infinity). See gguf-py `quants.py` `BF16.quantize_blocks`.
fn bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

/// The f16 of `x`, rounded to nearest even (numpy's `astype(float16)`, ggml's
/// `GGML_FP32_TO_FP16`), as little-endian bytes.
fn f16_bits(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// The f32 value of the f16 just stored (the K quantizers requantize with the stored scale).
fn f16_value(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}
