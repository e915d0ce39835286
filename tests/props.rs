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
