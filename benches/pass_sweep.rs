//! Tuning aid: the in-process pass over two full-size SD1.5 files for several item and
//! window sizes. `cargo bench --bench pass_sweep`

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]
mod common;
use ckpt_core::catalog::Grouping;
use ckpt_core::gram::{GramSpec, gather};
use ckpt_core::pass::{NoProgress, Pass, Plan};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;
use common::*;
fn main() {
    let a = model(arch("sd1"), FloatFormat::F16, 1, 0.0);
    let b = model(arch("sd1"), FloatFormat::F16, 1, 0.1);
    warm(&[&a, &b]);
    let input = gb(std::fs::metadata(&a).unwrap().len() * 2);
    let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    let plan = Plan::new(vec![&ca, &cb]);
    let grouping = Grouping::for_arch(arch("sd1"));
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    for item in [1usize << 20, 4 << 20, 16 << 20] {
        for window in [16usize << 20, 64 << 20, 256 << 20, 1 << 40] {
            let pass = Pass::new(&NoProgress).item_bytes(item).ahead_bytes(window);
            let t = median_secs(5, || {
                gather(&plan, &grouping, &all, GramSpec::default(), &pass).unwrap();
            });
            println!(
                "item {:>3} MiB window {:>7} MiB: {t:.3} s {:.1} GB/s",
                item >> 20,
                window >> 20,
                input / t
            );
        }
    }
}
