//! ckpt-diff's core, between the readers and the operations.
//!
//! * [`catalog`]: the architectures as data: the component and block of every key,
//!   detection of a file's architecture and variant, diffusers and LoRA names;
//! * [`kernels`]: the SIMD inner loops, with run-time CPU detection;
//! * [`pass`]: one parallel read of N checkpoints, tensor by tensor, feeding visitors;
//! * [`gram`]: the visitor at the center of every analysis, the inner products between
//!   all models per block, in f64;
//! * [`writer`]: safetensors outputs written to a temporary file, synced, renamed.

pub mod catalog;
pub mod gram;
// The crate's only unsafe code: SIMD intrinsics, each path called only where `level()` found
// its CPU features, every block saying why its pointer arithmetic stays in bounds.
#[allow(unsafe_code)]
pub mod kernels;
pub mod pass;
pub mod rng;
pub mod units;
pub mod writer;
