//! Tuning aid: single-thread speed of each hash algorithm over a file in the page cache.
mod common;
use std::time::Instant;
fn main() {
    let p = common::model(
        ckpt_diff::catalog::Arch::Sd1,
        ckpt_diff::reader::dtype::FloatFormat::F16,
        1,
        0.0,
    );
    common::warm(&[&p]);
    let data = std::fs::read(&p).unwrap();
    let gb = data.len() as f64 / 1e9;
    let t = Instant::now();
    let h = ckpt_diff::hash::sha256_hex(&data);
    println!(
        "sha256  {:.2} GB/s {}",
        gb / t.elapsed().as_secs_f64(),
        &h[..8]
    );
    let t = Instant::now();
    let h = blake3::hash(&data);
    println!(
        "blake3  {:.2} GB/s {}",
        gb / t.elapsed().as_secs_f64(),
        &h.to_hex()[..8]
    );
    let t = Instant::now();
    let h = crc32fast::hash(&data);
    println!("crc32   {:.2} GB/s {h:08x}", gb / t.elapsed().as_secs_f64());
}
