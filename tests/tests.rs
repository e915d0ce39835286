//! Integration tests: the binary run on generated checkpoints, checked against independent
//! computations. One test binary (see `util` for the helpers).

mod util;

mod asim;
mod bad_input;
mod detect;
mod diffusers;
mod fit;
mod fp8;
mod hash;
mod l2;
mod lineage;
mod lora;
mod merge;
mod pass;
mod props;
mod recipes;
mod sim;
mod ties;
mod torch;
mod validate;
