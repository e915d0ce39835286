//! Kernel throughput in cache (GB/s of stored input), for every kernel level this CPU has;
//! the GGUF dequantizers (GB/s of f32 written), and a memory-bandwidth reference.
//!
//!     cargo bench --bench kernels
//!     cargo bench --bench kernels -- 'ggml|memory'   # the dequantizers and the reference
//!
//! The data (1 MiB per operand) stays in L2, so these are compute ceilings; the full-size
//! benchmarks (`sim_full`) show what memory allows, and the `memory` group copies 256 MiB
//! (far past the caches) for the machine's own bandwidth.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

use ckpt_core::kernels;
use ckpt_read::dtype::FloatFormat;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn stored(format: FloatFormat, n: usize, seed: u64) -> Vec<u8> {
    let v: Vec<f64> = (0..n)
        .map(|i| (((i as u64).wrapping_mul(seed) % 2001) as f64 - 1000.0) / 3000.0)
        .collect();
    let mut out = vec![0u8; n * format.size()];
    kernels::from_f64(format, &v, &mut out);
    out
}

fn bench(c: &mut Criterion) {
    let n = 512 * 1024;
    for format in [FloatFormat::F16, FloatFormat::BF16, FloatFormat::F32] {
        let name = ckpt_read::dtype::name(format.dtype());
        let (a, b) = (stored(format, n, 7919), stored(format, n, 104_729));
        let mut g = c.benchmark_group(format!("{name} {} KiB x 2", a.len() >> 10));
        g.throughput(Throughput::Bytes(2 * a.len() as u64));
        g.bench_function("gram2_stored (fused)", |bench| {
            bench.iter(|| kernels::gram2_stored(format, &a, &b))
        });
        let mut ra = vec![0.0; kernels::CHUNK];
        let mut rb = vec![0.0; kernels::CHUNK];
        g.bench_function("to_f64 + gram2 (generic path)", |bench| {
            bench.iter(|| {
                let size = format.size();
                let mut s = 0.0;
                for (ca, cb) in a
                    .chunks(kernels::CHUNK * size)
                    .zip(b.chunks(kernels::CHUNK * size))
                {
                    let len = ca.len() / size;
                    kernels::to_f64(format, ca, &mut ra[..len]);
                    kernels::to_f64(format, cb, &mut rb[..len]);
                    s += kernels::gram2(&ra[..len], &rb[..len])[1];
                }
                s
            })
        });
        let values: Vec<f64> = (0..n).map(|i| i as f64 * 1e-6).collect();
        let mut out = vec![0u8; n * format.size()];
        g.bench_function("from_f64 (correctly rounded)", |bench| {
            bench.iter(|| kernels::from_f64(format, &values, &mut out))
        });
        g.finish();
    }
}

/// Every quantized type a diffusion GGUF holds, decoded whole blocks at a time to f32 by
/// `ckpt_read::gguf::dequantize` (what the pass calls per block): 256 Ki values, 1 MiB of
/// f32 out, from blocks quantized by the crate's own quantizers (so every scale and code is
/// one a real file holds).
fn ggml_decode(c: &mut Criterion) {
    use ckpt_read::gguf::{GgmlType, dequantize, quantize::quantize};
    let n = 256 * 1024;
    let values: Vec<f32> = (0..n)
        .map(|i| ((((i as u64).wrapping_mul(7919) % 2001) as f32) - 1000.0) / 30_000.0)
        .collect();
    let mut g = c.benchmark_group("ggml dequantize to f32, 1 MiB out");
    g.throughput(Throughput::Bytes(4 * n as u64));
    let mut out = vec![0f32; n];
    // Every block type the reader decodes (the float types are plain copies).
    for ty in GgmlType::ALL.into_iter().filter(|t| t.block_size() > 1) {
        let mut blocks = vec![0u8; ty.bytes_for(n).expect("whole blocks")];
        quantize(ty, &values, &mut blocks).expect("whole blocks");
        g.bench_function(ty.name(), |bench| {
            bench.iter(|| dequantize(ty, &blocks, &mut out))
        });
    }
    g.finish();
}

/// The machine's memory bandwidth as the decoders see it: one 256 MiB copy (read and write
/// past every cache), GB/s of bytes written.
fn memory(c: &mut Criterion) {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut g = c.benchmark_group("memory, 256 MiB");
    g.throughput(Throughput::Bytes(n as u64));
    g.sample_size(10);
    g.bench_function("copy (memcpy)", |bench| {
        bench.iter(|| dst.copy_from_slice(&src))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench, ggml_decode, memory
}
criterion_main!(benches);
