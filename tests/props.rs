//! Property tests: no byte sequence makes the reader or the pass panic, and what the writer
//! writes the reader reads back.

use ckpt_core::catalog::Grouping;
use ckpt_core::gram::{GramSpec, gather};
use ckpt_core::pass::{NoProgress, Pass, Plan};
use ckpt_core::writer::{OutputFile, TensorSpec};
use ckpt_read::{Checkpoint, Dtype};
use proptest::prelude::*;

/// Opens `bytes` as a file; if it opens, runs a full inner-product pass over it.
fn open_and_read(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let Ok(c) = Checkpoint::open(&p) else { return };
    for t in c.tensors() {
        assert_eq!(c.data(t).len(), t.byte_len());
    }
    let _ = ckpt_core::catalog::detect(&c);
    let plan = Plan::new(vec![&c, &c]);
    let keys: Vec<String> = plan.entries().iter().map(|e| e.key.clone()).collect();
    let grouping = Grouping::generic(keys.iter().map(String::as_str));
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let pass = Pass::new(&NoProgress).item_bytes(64);
    gather(
        &plan,
        &grouping,
        &all,
        GramSpec {
            center: Some(0),
            per_tensor: true,
            distances: true,
        },
        &pass,
    )
    .unwrap();
}

fn valid_file() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"BF16","shape":[],"data_offsets":[12,14]},"c":{"dtype":"I64","shape":[1],"data_offsets":[14,22]},"d":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[22,26]},"e":{"dtype":"F32","shape":[0],"data_offsets":[26,26]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend((0..26u8).map(|i| i.wrapping_mul(37)));
    bytes
}

#[test]
fn the_valid_seed_file_reads() {
    open_and_read(&valid_file());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.safetensors");
    std::fs::write(&p, valid_file()).unwrap();
    assert_eq!(Checkpoint::open(&p).unwrap().tensors().len(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        open_and_read(&bytes);
    }

    #[test]
    fn random_headers_never_panic(len in 0u64..400, body in "[{}\\[\\]\":,0-9a-zA-Z_ .-]{0,300}", tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(body.as_bytes());
        bytes.extend(tail);
        open_and_read(&bytes);
    }

    #[test]
    fn mutated_valid_files_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6)) {
        let mut bytes = valid_file();
        for (at, v) in flips {
            let at = at % bytes.len();
            bytes[at] = v;
        }
        open_and_read(&bytes);
    }

    #[test]
    fn writer_and_reader_round_trip(
        tensors in proptest::collection::btree_map("[a-z][a-z0-9_.]{0,12}", (0usize..4, proptest::collection::vec(0usize..4, 0..3)), 1..6),
        seed in any::<u8>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.safetensors");
        let dtypes = [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::I64];
        let specs: Vec<TensorSpec> = tensors.iter().map(|(name, (d, shape))| TensorSpec { name: name.clone(), dtype: dtypes[*d], shape: shape.clone() }).collect();
        let out = OutputFile::create(&path, specs.clone(), &[("k".into(), "v".into())], &[]).unwrap();
        let mut written = std::collections::HashMap::new();
        for (i, t) in out.tensors().to_vec().iter().enumerate() {
            let data: Vec<u8> = (0..t.byte_len()).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            out.write_tensor_bytes(i, 0, &data).unwrap();
            written.insert(t.name.clone(), data);
        }
        out.finish().unwrap();
        let c = Checkpoint::open(&path).unwrap();
        prop_assert_eq!(c.tensors().len(), specs.len());
        for spec in &specs {
            let t = c.get(&spec.name).unwrap();
            prop_assert_eq!(t.dtype, spec.dtype);
            prop_assert_eq!(&t.shape, &spec.shape);
            prop_assert_eq!(c.data(t), &written[&spec.name][..]);
        }
        prop_assert_eq!(c.metadata_value("k"), Some("v"));
    }
}

/// A file with one layer quantized per layer as ComfyUI stores it, every part of it drawn at
/// random: the format named (those ComfyUI defines, one it does not), the codes' dtype and
/// shape (empty ones too), the scales' dtype, shape and bytes (NaN and infinity among them),
/// the record (JSON, zero bytes, garbage) and its carrier.
fn quantized_file(
    format: &str,
    weight: (Dtype, usize, usize),
    scale: (Dtype, Vec<usize>, Vec<u8>),
    record: Vec<u8>,
    in_metadata: bool,
) -> Vec<u8> {
    let (wd, n, k) = weight;
    let wbytes = n * k * ckpt_read::dtype::bit_size(wd) / 8;
    let (sd, sshape, sdata) = scale;
    let sbytes = sshape.iter().product::<usize>() * ckpt_read::dtype::bit_size(sd) / 8;
    let sdata: Vec<u8> = sdata.iter().copied().cycle().take(sbytes).collect();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "l.weight".into(),
            wd,
            vec![n, k],
            (0..wbytes).map(|i| (i * 53 % 251) as u8).collect(),
        ),
        ("l.weight_scale".into(), sd, sshape, sdata),
        (
            "l.weight_scale_2".into(),
            Dtype::F32,
            vec![],
            0.5f32.to_le_bytes().to_vec(),
        ),
        ("l.bias".into(), Dtype::BF16, vec![n], vec![0x3c; n * 2]),
    ];
    if format == "asym_w4a8_int8" {
        // Its group scales are `weight_s_rel`, with a channel scale per row and a codebook.
        tensors[1].0 = "l.weight_s_rel".into();
        let channel: Vec<u8> = tensors[1].3.iter().copied().cycle().take(n * 4).collect();
        tensors.push(("l.weight_s_channel".into(), Dtype::F32, vec![n], channel));
        let lut: Vec<u8> = (0..16)
            .flat_map(|i| (i as f32 / 8.0 - 1.0).to_le_bytes())
            .collect();
        tensors.push(("l.weight_codebook".into(), Dtype::F32, vec![16], lut));
    }
    let conf = format!("{{\"format\": \"{format}\"}}");
    if !in_metadata {
        tensors.push((
            "l.comfy_quant".into(),
            Dtype::U8,
            vec![record.len()],
            record,
        ));
    }
    let mut header = serde_json::Map::new();
    if in_metadata {
        header.insert(
            "__metadata__".into(),
            serde_json::json!({ "_quantization_metadata":
                format!("{{\"format_version\": \"1.0\", \"layers\": {{\"l\": {conf}}}}}") }),
        );
    }
    let mut at = 0;
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in &tensors {
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": ckpt_read::dtype::name(*dtype),
                "shape": shape,
                "data_offsets": [at, at + bytes.len()],
            }),
        );
        at += bytes.len();
        data.extend(bytes);
    }
    let text = serde_json::Value::Object(header).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(data);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// No quantized layer, however damaged, makes the reader or a pass panic: it is read
    /// (and decoded by every pass) or refused.
    #[test]
    fn random_quantized_layers_never_panic(
        format in prop::sample::select(vec![
            "float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8", "int8_tensorwise",
            "convrot_w4a4", "awq_w4a16", "asym_w4a8_int8", "float3_e1m1",
        ]),
        wd in prop::sample::select(vec![
            Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::U8, Dtype::I8, Dtype::F4, Dtype::BF16,
        ]),
        n in prop::sample::select(vec![0usize, 1, 16, 32, 144]),
        k in prop::sample::select(vec![0usize, 2, 16, 32, 256, 512]),
        sd in prop::sample::select(vec![
            Dtype::F32, Dtype::F8_E4M3, Dtype::U8, Dtype::F8_E8M0, Dtype::BF16,
        ]),
        sshape in prop::sample::select(vec![
            vec![], vec![1], vec![144, 1], vec![32, 1], vec![144], vec![128, 4], vec![128, 8],
            vec![256, 32], vec![256, 4], vec![128, 16], vec![0, 4], vec![usize::MAX],
        ]),
        sdata in proptest::collection::vec(
            prop::sample::select(vec![0u8, 0x3c, 0x7f, 0x80, 0xc0, 0xff, 0x01]), 1..16),
        record in prop::sample::select(vec![0u8, 1, 2, 3]),
        in_metadata in any::<bool>(),
    ) {
        let conf = format!("{{\"format\": \"{format}\"}}").into_bytes();
        let record = match record {
            0 => conf,
            1 => vec![0; conf.len()],
            2 => b"{\"format\": ".to_vec(),
            _ => vec![0xff, 0xfe],
        };
        let wk = if matches!(wd, Dtype::U8 | Dtype::I8) && matches!(format, "nvfp4" | "asym_w4a8_int8") {
            k / 2
        } else {
            k
        };
        // The shape the format stores its scales in, for a layer that may then be read.
        let sshape = match (sshape.first(), format) {
            (Some(&usize::MAX), "nvfp4") => vec![n.div_ceil(128) * 128, (k / 16).div_ceil(4) * 4],
            (Some(&usize::MAX), "mxfp8") => vec![n.div_ceil(128) * 128, (k / 32).div_ceil(4) * 4],
            (Some(&usize::MAX), "asym_w4a8_int8") => vec![n, k / 16],
            (Some(&usize::MAX), _) => vec![n, 1],
            _ => sshape,
        };
        open_and_read(&quantized_file(format, (wd, n, wk), (sd, sshape, sdata), record, in_metadata));
    }
}
