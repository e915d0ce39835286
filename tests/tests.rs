//! Integration tests: the binary run on generated checkpoints, checked against independent
//! computations. One test binary (see `util` for the helpers).

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod util;
mod words;

mod asim;
mod bad_input;
mod comfy_quant;
mod detect;
mod diffusers;
mod fit;
mod formats;
mod fp8;
mod gguf;
mod gguf_fit;
mod gguf_quant;
mod gguf_write;
mod hash;
mod l2;
mod lineage;
mod lora;
mod lora_2026;
mod lora_2026_peft;
mod lora_diffusers;
mod merge;
mod near_miss;
mod pass;
mod props;
mod recipes;
mod sim;
mod ties;
mod torch;
mod validate;
