//! Seeded random numbers, in one place, owned by neither the engine nor the test-data
//! generator: what users' seeded results depend on must not move when test data changes.
//!
//! * [`counter`]: counter-based streams (SplitMix64's mixer over a seed, a tensor's name
//!   and an element index): any element on any thread, always the same. DARE's masks and
//!   the synthetic checkpoints draw from them (with different stream identities).
//! * [`torch`]: PyTorch's CPU `torch.manual_seed` + `torch.randn`, bit for bit, for
//!   ASimilarity's random input.

pub mod counter;
pub mod torch;
