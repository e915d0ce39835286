//! ckpt-diff: analyze, diff and merge Stable Diffusion checkpoints (`.safetensors`).
//!
//! Data flows one way:
//!
//! ```text
//! files -> reader -> catalog -> pass -> views -> reports / outputs
//! ```
//!
//! * [`reader`] maps files and checks their headers; knows nothing about SD.
//! * [`catalog`] knows SD1/SD2/SDXL: the component and block of every key, detection.
//! * [`kernels`] are the SIMD inner loops; [`pass`] walks N models tensor by tensor in
//!   parallel and feeds visitors; [`gram`] is the visitor at the center of every analysis:
//!   the inner products between all models, per block, in f64.
//! * [`views`] turn accumulated statistics into results; [`reports`] print them.

pub mod catalog;
pub mod cli;
pub mod fix;
pub mod gram;
pub mod hash;
pub mod index;
pub mod kernels;
pub mod lora;
pub mod merge;
pub mod pass;
pub mod reader;
pub mod reports;
pub mod rng;
pub mod sketch;
pub mod synth;
pub mod sys;
pub mod units;
pub mod views;
pub mod writer;
