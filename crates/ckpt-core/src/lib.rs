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
pub mod kernels;
pub mod pass;
pub mod rng;
pub mod units;
pub mod writer;
