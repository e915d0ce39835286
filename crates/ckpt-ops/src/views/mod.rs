//! Analyses: each turns accumulated statistics into a plain result struct. Nothing here
//! prints; the binary's `reports` module renders them.

pub mod asim;
pub mod components;
pub mod fingerprint;
pub mod fit;
pub mod inspect;
pub mod l2;
pub mod lineage;
pub mod lora;
pub(crate) mod mds;
pub mod sim;
pub mod validate;
