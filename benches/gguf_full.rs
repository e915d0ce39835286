//! GGUF (issue #27) on a full-size Flux.1 dev diffuser in BF16 (23.8 GB, BFL's bare keys,
//! generated): `convert` to Q8_0 and Q4_K_M beside a plain read of the source writing the
//! same number of bytes (the limit, same run), and `sim` of each GGUF against its source
//! beside a plain read of both files; the peer is gguf-py 0.19.0 doing the same work in
//! Python (`benches/peers/gguf_py_peer.py`: `gguf.quants.quantize` + `GGUFWriter`, and
//! `GGUFReader` + `gguf.quants.dequantize` + numpy sums). gguf-py has no K-type quantizer:
//! its Q4_K_M row is the `sim` side only. Then every type the writer makes, on the same
//! model cut to one double and one single block at full width (`D00`, `S00` and every
//! module outside the blocks: 0.55 B parameters): what each costs in bytes (full-size file
//! size from the writer's plan of the full model, bits per weight) and in similarity (per
//! block cosine against the source).
//!
//!     cargo bench --bench gguf_full      # just bench-gguf
//!
//! The per-type table runs first (minutes), then the full-size runs. ~37 GB of disk at its
//! peak (the source and one output); every file is deleted at the end
//! (`CKPT_DIFF_BENCH_KEEP=1` keeps the sources). On a disk without room for the whole model
//! and its Q8_0 with 8 GB to spare, the model is cut to half of its blocks at full width and
//! the report says so (that run took 41 minutes on 2 shared cores). The peer runs when
//! `CKPT_DIFF_PYTHON` (default `target/golden-venv/bin/python`) imports gguf 0.19.0, torch,
//! safetensors and numpy. `CKPT_DIFF_BENCH_ONLY=types` runs the per-type table alone, `full`
//! the full-size runs alone. Writes reports/bench/gguf-flux-dev.md.

// Tests and benchmarks report what they measure, and signal the binary through libc.
#![allow(unsafe_code, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt_ops::gguf::Quant;
use ckpt_ops::synth::Synthetic;
use ckpt_read::dtype::FloatFormat;
use common::*;

/// What must stay free on the disk after a write (the machine is shared).
const MARGIN: u64 = 8_000_000_000;

/// The modules outside the transformer blocks, and the first double and single block.
/// Double blocks 0-9, single blocks 0-18 and the modules outside the blocks.
const HALF: &str = r"(double_blocks\.[0-9]|single_blocks\.(1[0-8]|[0-9])|(^|\.)(img_in|txt_in|time_in|vector_in|guidance_in|final_layer))\.";

const CUT: &str = r"(double_blocks\.0|single_blocks\.0|(^|\.)(img_in|txt_in|time_in|vector_in|guidance_in|final_layer))\.";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ckpt-diff"))
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn keep() -> bool {
    std::env::var_os(ckpt_read::env::BENCH_KEEP.name).is_some()
}

/// A Python with gguf-py for the peer, if there is one.
fn python() -> Option<PathBuf> {
    let py = std::env::var_os(ckpt_read::env::PYTHON.name)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/golden-venv/bin/python")
        });
    let ok = std::process::Command::new(&py)
        .args(["-c", "import gguf, torch, safetensors, numpy"])
        .status()
        .is_ok_and(|st| st.success());
    if !ok {
        eprintln!("no gguf-py peer: {} cannot import gguf", py.display());
    }
    ok.then_some(py)
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peers/gguf_py_peer.py")
}

/// Whether `bytes` more fit the disk with [`MARGIN`] left; says so when they do not.
fn room_for(bytes: u64, what: &str) -> bool {
    let free = free_bytes(&data_dir());
    let ok = free >= bytes + MARGIN;
    if !ok {
        eprintln!(
            "skipping {what}: it writes {:.1} GB and {:.1} GB are free ({:.0} GB must remain)",
            gb(bytes),
            gb(free),
            gb(MARGIN)
        );
    }
    ok
}

/// Per-block cosines of `sim --json` (rows in ckpt-diff's order) and the totals.
struct Sim {
    blocks: Vec<(String, f64)>,
    block_mean: f64,
    flat: f64,
}

impl Sim {
    fn parse(json: &str) -> Sim {
        let v: serde_json::Value = serde_json::from_str(json).expect("sim --json");
        let blocks = v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["label"].as_str().unwrap().to_string(),
                    r["similarity"].as_f64().unwrap(),
                )
            })
            .collect();
        let t = &v["totals"];
        Sim {
            blocks,
            block_mean: t["block_mean"]["similarity"].as_f64().unwrap_or(f64::NAN),
            flat: t["flat_unet"]["similarity"]
                .as_f64()
                .or_else(|| t["flat_all"]["similarity"].as_f64())
                .unwrap_or(f64::NAN),
        }
    }

    /// The block of lowest cosine and its cosine.
    fn worst(&self) -> (&str, f64) {
        self.blocks
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(l, c)| (l.as_str(), *c))
            .unwrap_or(("", f64::NAN))
    }

    fn block(&self, label: &str) -> f64 {
        self.blocks
            .iter()
            .find(|(l, _)| l == label)
            .map_or(f64::NAN, |b| b.1)
    }
}

/// The peer's `sim` line: the overall cosine and each block's.
fn peer_sim(out: &str) -> Sim {
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("peer json");
    let mut blocks: Vec<(String, f64)> = v["blocks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.clone(), c.as_f64().unwrap()))
        .collect();
    blocks.sort_by(|a, b| a.0.cmp(&b.0));
    let block_mean = blocks.iter().map(|b| b.1).sum::<f64>() / blocks.len() as f64;
    Sim {
        blocks,
        block_mean,
        flat: v["cosine"].as_f64().unwrap(),
    }
}

/// The file the writer would make of `src` with `quant`: its exact size, and the share of
/// the parameters each ggml type holds.
struct Planned {
    bytes: u64,
    params: u64,
    mix: BTreeMap<&'static str, u64>,
}

fn planned(src: &Path, quant: Quant) -> Planned {
    let ckpt = ckpt_read::open(src).expect("open");
    let det = ckpt_core::catalog::detect(&ckpt);
    let options = ckpt_ops::gguf::GgufOptions {
        quant: Some(quant),
        long_names: false,
    };
    let (_, mut plan) = ckpt_ops::gguf::plan_checkpoint(&ckpt, &det, &options).expect("plan");
    // The provenance KV `convert` adds.
    plan.kvs.push((
        "ckpt_diff.converted_from".into(),
        ckpt_read::gguf::Value::String("safetensors".into()),
    ));
    let outs: Vec<_> = plan.tensors.iter().map(|t| t.out.clone()).collect();
    let h = ckpt_read::gguf::write::header(&plan.kvs, &outs, 32).expect("header");
    let mut mix = BTreeMap::new();
    for t in &outs {
        *mix.entry(t.ggml_type.name()).or_insert(0) += t.numel() as u64;
    }
    Planned {
        bytes: h.bytes.len() as u64 + h.data_len,
        params: mix.values().sum(),
        mix,
    }
}

impl Planned {
    fn bpw(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.params as f64
    }

    fn mix_text(&self) -> String {
        let mut v: Vec<_> = self.mix.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .map(|(t, n)| format!("{t} {:.1}%", 100.0 * **n as f64 / self.params as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The writer's types: F16, BF16 and every mix, without the aliases of the `_M` mixes.
fn quants() -> Vec<Quant> {
    Quant::names()
        .into_iter()
        .filter_map(|n| Quant::parse(n).filter(|q| q.name() == n))
        .collect()
}

/// A full-size sparse twin of the source (real header, zero weights): the writer's plan of
/// the full model for every type without the disk.
fn sparse_full() -> PathBuf {
    sparse_diffuser("flux", FloatFormat::BF16, "flux-dev-bf16-zeros", 1)
}

/// The full-size table: rows of `| run | time | GB | GB/s | limit | anon | RSS | cosine |`.
fn full_size(md: &mut String, python: Option<&Path>) -> Vec<(Quant, Planned, u64, Sim)> {
    let mut measured = Vec::new();
    let model = Synthetic::base(arch("flux"), 1);
    // The whole diffuser when it and its Q8_0 fit the disk with the margin left; else the
    // first half of each kind of block (a shared disk): the report says which.
    let made = data_dir().join("flux-dev-bf16-base.safetensors").exists();
    let whole = made || free_bytes(&data_dir()) >= 23_800_000_000 + 12_700_000_000 + MARGIN;
    let (name, keys) = if whole {
        ("dev-bf16-base", None)
    } else {
        eprintln!(
            "{:.1} GB free: the whole diffuser (23.8 GB) and its Q8_0 (12.7 GB) do not fit \
             with {:.0} GB left; running on the first half of the blocks",
            gb(free_bytes(&data_dir())),
            gb(MARGIN)
        );
        ("dev-bf16-half", Some(HALF))
    };
    if !made
        && !room_for(
            if whole {
                23_800_000_000
            } else {
                12_300_000_000
            },
            "the source",
        )
    {
        return measured;
    }
    let src = diffuser("flux", FloatFormat::BF16, name, &model, keys);
    let src_len = len(&src);
    let params = planned(&src, Quant::parse("BF16").unwrap()).params;
    md.push_str(&format!(
        "## {}: Flux.1 dev diffuser, BF16 source {:.1} GB ({:.2} B parameters), {} threads, {} kernels\n\n\
         {}Every run starts from an evicted page cache. Limits, same run: convert, a plain \
         read of the source (8 MiB reads) writing the GGUF's byte count, then fsync; sim, a \
         plain read of the GGUF and the source through memory maps.\n\n\
         | run | time | GB read + written | GB/s | limit, same run | peak anonymous RSS | peak RSS | cosine |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        if whole { "Full size" } else { "Full width, half the blocks" },
        gb(src_len),
        params as f64 / 1e9,
        rayon::current_num_threads(),
        ckpt_core::kernels::level().name(),
        if whole {
            String::new()
        } else {
            format!(
                "The whole diffuser (23.8 GB) and its Q8_0 (12.7 GB) did not fit this shared \
                 disk with {:.0} GB left, so the model is cut to double blocks 0-9 and single \
                 blocks 0-18 (half of each) and every module outside the blocks, at full \
                 width: time scales with the parameters, memory does not (no tensor is held \
                 whole).\n\n",
                gb(MARGIN)
            )
        },
    ));
    let row = |md: &mut String, what: &str, m: &Measured, io: u64, limit: f64, cos: String| {
        md.push_str(&format!(
            "| {what} | {:.1} s | {:.1} | {:.2} | {} | {:.0} MB | {:.2} GB | {cos} |\n",
            m.secs,
            gb(io),
            gb(io) / m.secs,
            if limit > 0.0 {
                format!("{:.1} s", limit)
            } else {
                String::new()
            },
            m.peak_anon as f64 / 1e6,
            gb(m.peak_rss),
        ));
    };
    for name in ["Q8_0", "Q4_K_M"] {
        let quant = Quant::parse(name).unwrap();
        let plan = planned(&src, quant);
        if !room_for(plan.bytes, &format!("convert to {name}")) {
            continue;
        }
        let out = data_dir().join(format!("flux-dev-{name}.gguf"));
        let scratch = data_dir().join("plain-copy.bin");
        evict(&[&src]);
        let copy = plain_copy(&src, &scratch, Some(plan.bytes));
        evict(&[&src]);
        let m = convert(&src, &out, name);
        let out_len = len(&out);
        eprintln!("{}", m.stdout.trim());
        row(
            md,
            &format!(
                "ckpt-diff convert --quant {name} ({:.2} GB written)",
                gb(out_len)
            ),
            &m,
            src_len + out_len,
            copy,
            String::new(),
        );
        let paths: [&Path; 2] = [&out, &src];
        evict(&paths);
        let t = std::time::Instant::now();
        mmap_read_rate_once(&paths);
        let read = t.elapsed().as_secs_f64();
        let args = ["sim", s(&src), s(&out), "--json"];
        evict(&paths);
        let m = run_measured(exe(), &args);
        let ours = Sim::parse(&m.stdout);
        row(
            md,
            &format!("ckpt-diff sim BF16 {name}"),
            &m,
            src_len + out_len,
            read,
            format!("{:.6}", ours.flat),
        );
        let m = run_measured(exe(), &args);
        row(
            md,
            &format!("ckpt-diff sim BF16 {name}, again (cache as the first left it)"),
            &m,
            src_len + out_len,
            0.0,
            format!("{:.6}", Sim::parse(&m.stdout).flat),
        );
        if let Some(py) = python {
            evict(&paths);
            let m = run_measured(py, &[s(&peer_script()), "sim", s(&out), s(&src)]);
            let theirs = peer_sim(&m.stdout);
            let gap = ours
                .blocks
                .iter()
                .map(|(l, c)| (c - theirs.block(l)).abs())
                .fold((ours.flat - theirs.flat).abs(), f64::max);
            row(
                md,
                &format!(
                    "peer: gguf-py GGUFReader + dequantize + numpy, {name} (largest difference from ckpt-diff's cosines {gap:.1e})"
                ),
                &m,
                src_len + out_len,
                0.0,
                format!("{:.6}", theirs.flat),
            );
        }
        let _ = std::fs::remove_file(&out);
        // gguf-py quantizes the legacy types only: the peer writes Q8_0, not Q4_K_M.
        if let (Some(py), true) = (python, name == "Q8_0") {
            let peer_out = data_dir().join(format!("flux-dev-{name}-gguf-py.gguf"));
            if room_for(plan.bytes, "gguf-py's convert") {
                evict(&[&src]);
                let m = run_measured(
                    py,
                    &[s(&peer_script()), "convert", s(&src), s(&peer_out), name],
                );
                let peer_len = len(&peer_out);
                // Its values against ckpt-diff's: the same cosines to the last digit.
                let check = run_measured(exe(), &["sim", s(&src), s(&peer_out), "--json"]);
                let same = Sim::parse(&check.stdout);
                let equal = same.blocks == ours.blocks;
                row(
                    md,
                    &format!(
                        "peer: gguf-py quantize + GGUFWriter, {name} ({:.2} GB written; its sim {} ckpt-diff's file's in every block)",
                        gb(peer_len),
                        if equal { "equals" } else { "DIFFERS from" }
                    ),
                    &m,
                    src_len + peer_len,
                    copy,
                    format!("{:.6}", same.flat),
                );
                let _ = std::fs::remove_file(&peer_out);
            }
        }
        measured.push((quant, plan, out_len, ours));
    }
    md.push_str(
        "\ngguf-py 0.19.0 has no quantizer for the K types (`gguf.quants` defines only \
         `dequantize_blocks` for Q2_K..Q6_K), so it cannot write Q4_K_M; its Q4_K_M row is \
         the `sim` side only.\n",
    );
    if !keep() {
        let _ = std::fs::remove_file(&src);
    }
    measured
}

/// The per-type table on the model cut to `D00`, `S00` and the modules outside the blocks.
fn types(md: &mut String) {
    let zeros = sparse_full();
    let cut = diffuser(
        "flux",
        FloatFormat::BF16,
        "dev-bf16-d0s0",
        &Synthetic::base(arch("flux"), 1),
        Some(CUT),
    );
    let cut_params = planned(&cut, Quant::parse("BF16").unwrap()).params;
    md.push_str(&format!(
        "\n## What each type costs\n\n\
         Size: the writer's plan of the full Flux.1 dev diffuser (11.9 B parameters, exact \
         file bytes without writing; the same plan's size is checked against the files of the \
         first table). Similarity: \
         `ckpt-diff sim` of the GGUF against its BF16 source, on the same generated model cut \
         to the first double block (D00), the first single block (S00) and every module \
         outside the blocks (IN, OUT: kept BF16/F32 by city96's rules), {:.2} B parameters \
         at full width. Weights are synth's random values, not a trained model's.\n\n\
         | type | full-size file | bits per weight | parameters by type (full size) | D00 | S00 | worst block | block mean (IN, D00, S00, OUT) | whole diffuser | convert, cut model | peak anonymous RSS |\n\
         | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n",
        cut_params as f64 / 1e9
    ));
    let out = data_dir().join("flux-dev-cut.gguf");
    for quant in quants() {
        let plan = planned(&zeros, quant);
        let name = quant.name();
        let conv = convert(&cut, &out, name);
        let m = run_measured(exe(), &["sim", s(&cut), s(&out), "--json"]);
        let _ = std::fs::remove_file(&out);
        let sim = Sim::parse(&m.stdout);
        let (worst, wc) = sim.worst();
        eprintln!("{name}: {:.6} ({:.0} s)", sim.flat, conv.secs);
        md.push_str(&format!(
            "| {name} | {:.2} GB | {:.2} | {} | {:.6} | {:.6} | {worst} {wc:.6} | {:.6} | {:.6} | {:.1} s | {:.0} MB |\n",
            gb(plan.bytes),
            plan.bpw(),
            plan.mix_text(),
            sim.block("D00"),
            sim.block("S00"),
            sim.block_mean,
            sim.flat,
            conv.secs,
            conv.peak_anon as f64 / 1e6,
        ));
    }
    if !keep() {
        let _ = std::fs::remove_file(&cut);
    }
    let _ = std::fs::remove_file(&zeros);
}

/// The files of the first table against their plan, and their blocks.
fn checked(md: &mut String, full: &[(Quant, Planned, u64, Sim)]) {
    if !full.is_empty() {
        md.push_str(
            "\nThe same on the model of the first table (its files): planned size against \
             the file written, and the cosines over all its blocks.\n\n\
             | type | planned | written | D00 | S00 | worst block | block mean | whole diffuser |\n\
             | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n",
        );
        for (q, plan, written, sim) in full {
            let (worst, wc) = sim.worst();
            md.push_str(&format!(
                "| {} | {} B | {} B | {:.6} | {:.6} | {worst} {wc:.6} | {:.6} | {:.6} |\n",
                q.name(),
                plan.bytes,
                written,
                sim.block("D00"),
                sim.block("S00"),
                sim.block_mean,
                sim.flat
            ));
        }
    }
}

/// `ckpt-diff convert SRC -o OUT --quant NAME`, replacing OUT, measured.
fn convert(src: &Path, out: &Path, name: &str) -> Measured {
    run_measured(
        exe(),
        &["convert", s(src), "-o", s(out), "--quant", name, "-f", "-q"],
    )
}

/// The load averages over 1, 5 and 15 minutes, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let only = std::env::var(ckpt_read::env::BENCH_ONLY.name).unwrap_or_default();
    let python = python();
    let report = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/bench/gguf-flux-dev.md");
    let mut md =
        String::from("# GGUF: Flux.1 dev, `convert --quant` and `sim`, beside gguf-py\n\n");
    md.push_str(&format!(
        "`cargo bench --bench gguf_full`; load average at the start {}.\n\n",
        load_average()
    ));
    // The per-type table first (minutes), then the full-size runs (most of an hour).
    let mut table = String::new();
    if only != "full" {
        types(&mut table);
        std::fs::write(&report, format!("{md}{table}")).unwrap();
    }
    let mut full_md = String::new();
    let full = if only == "types" {
        Vec::new()
    } else {
        full_size(&mut full_md, python.as_deref())
    };
    md.push_str(&full_md);
    md.push_str(&table);
    checked(&mut md, &full);
    md.push_str(&format!("\nload average at the end {}.\n", load_average()));
    println!("{md}");
    std::fs::write(&report, md).unwrap();
}
