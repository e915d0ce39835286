//! The interpreter against pickles that CPython 3.11's `pickle.dumps` wrote (hex below) of
//! `{'a': [1, 2.5, 'x', b'\x00\x01', None, True], 'b': ('t', -3, 2**70),
//!   'c': OrderedDict([('k', 7)])}` in protocols 0 to 5.

use super::*;

const SAMPLE: [&str; 6] = [
    "286470300a56610a70310a286c70320a49310a6146322e350a6156780a70330a61635f636f646563730a656e636f64650a70340a28565c7530303030010a70350a566c6174696e310a70360a7470370a5270380a614e614930310a617356620a70390a2856740a7031300a492d330a4c313138303539313632303731373431313330333432344c0a747031310a7356630a7031320a63636f6c6c656374696f6e730a4f726465726564446963740a7031330a2874527031340a566b0a7031350a49370a73732e",
    "7d71002858010000006171015d7102284b014740040000000000005801000000787103635f636f646563730a656e636f64650a71042858020000000001710558060000006c6174696e3171067471075271084e4930310a65580100000062710928580100000074710a4afdffffff4c313138303539313632303731373431313330333432344c0a74710b580100000063710c63636f6c6c656374696f6e730a4f726465726564446963740a710d2952710e58010000006b710f4b0773752e",
    "80027d71002858010000006171015d7102284b014740040000000000005801000000787103635f636f646563730a656e636f64650a710458020000000001710558060000006c6174696e3171068671075271084e88655801000000627109580100000074710a4afdffffff8a0900000000000000004087710b580100000063710c63636f6c6c656374696f6e730a4f726465726564446963740a710d2952710e58010000006b710f4b0773752e",
    "80037d71002858010000006171015d7102284b0147400400000000000058010000007871034302000171044e8865580100000062710558010000007471064afdffffff8a09000000000000000040877107580100000063710863636f6c6c656374696f6e730a4f726465726564446963740a71092952710a58010000006b710b4b0773752e",
    "80049569000000000000007d94288c0161945d94284b014740040000000000008c01789443020001944e88658c0162948c0174944afdffffff8a0900000000000000004087948c0163948c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c016b944b0773752e",
    "80059569000000000000007d94288c0161945d94284b014740040000000000008c01789443020001944e88658c0162948c0174944afdffffff8a0900000000000000004087948c0163948c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c016b944b0773752e",
];

/// `pickle.dumps({'w': R()}, protocol=2)` where `R.__reduce__` returns
/// `(os.system, ('touch /tmp/pwned',))`.
const EVIL: &str = "80027d7100580100000077710163706f7369780a73797374656d0a71025810000000746f756368202f746d702f70776e65647103857104527105732e";

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn test_every_protocol_builds_the_same_value() {
    for (proto, hex) in SAMPLE.iter().enumerate() {
        let bytes = unhex(hex);
        let p = parse(&bytes, 0, Limits::default()).unwrap_or_else(|e| panic!("{proto}: {e}"));
        assert_eq!(p.end, bytes.len(), "protocol {proto}");
        let a = p.get(p.root, "a").unwrap();
        let a = p.items(a).unwrap();
        assert_eq!(p.node(a[0]), &Node::Int(1), "protocol {proto}");
        assert_eq!(p.node(a[1]), &Node::Float(2.5));
        assert_eq!(p.as_str(a[2]), Some("x"));
        assert_eq!(p.node(a[3]), &Node::Bytes(vec![0, 1]), "protocol {proto}");
        assert_eq!(p.node(a[4]), &Node::None);
        assert_eq!(p.node(a[5]), &Node::Bool(true));
        let b = p.items(p.get(p.root, "b").unwrap()).unwrap();
        assert_eq!(p.as_str(b[0]), Some("t"));
        assert_eq!(p.node(b[1]), &Node::Int(-3));
        assert!(matches!(p.node(b[2]), Node::BigInt(_)), "protocol {proto}");
        let c = p.get(p.root, "c").unwrap();
        assert_eq!(
            p.node(p.get(c, "k").unwrap()),
            &Node::Int(7),
            "protocol {proto}"
        );
        // OrderedDict is data; `_codecs.encode` (how protocols < 3 write bytes) too.
        assert!(p.globals.iter().all(|g| g.verdict == Verdict::Data));
    }
}

#[test]
fn test_reduce_of_os_system_is_recorded_not_run() {
    let bytes = unhex(EVIL);
    let p = parse(&bytes, 100, Limits::default()).unwrap();
    assert_eq!(p.globals.len(), 1);
    let g = &p.globals[0];
    assert_eq!((g.module.as_str(), g.name.as_str()), ("posix", "system"));
    assert_eq!(g.verdict, Verdict::Dangerous);
    // The GLOBAL opcode sits at byte 13 of the stream; offsets count from `base`.
    assert_eq!(bytes[13], b'c');
    assert_eq!(g.offset, 113);
    let w = p.get(p.root, "w").unwrap();
    let Node::Object { class, args, .. } = p.node(w) else {
        panic!("{:?}", p.node(w));
    };
    assert_eq!(p.global(*class).unwrap().name, "system");
    assert_eq!(p.as_str(args[0]), Some("touch /tmp/pwned"));
}

#[test]
fn test_truncation_and_garbage_are_errors_with_offsets() {
    let bytes = unhex(SAMPLE[2]);
    for cut in [1, 5, 20, bytes.len() - 1] {
        let e = parse(&bytes[..cut], 0, Limits::default()).unwrap_err();
        assert!(e.offset <= cut as u64, "{e}");
    }
    let e = parse(b"\x80\x02\xff", 0, Limits::default()).unwrap_err();
    assert_eq!(e.offset, 2);
    assert!(e.what.contains("0xff"), "{e}");
}

#[test]
fn test_limits_stop_growth() {
    // A list appended to a million times through the memo: items are counted.
    let mut bytes = b"\x80\x02]q\x00".to_vec();
    for _ in 0..1000 {
        bytes.extend_from_slice(b"h\x00a");
    }
    bytes.push(b'.');
    let limits = Limits {
        max_items: 500,
        ..Limits::default()
    };
    let e = parse(&bytes, 0, limits).unwrap_err();
    assert!(e.what.contains("500"), "{e}");
    // Within the limit the same stream parses, sharing the value (the list holds itself).
    let p = parse(&bytes, 0, Limits::default()).unwrap();
    assert_eq!(p.items(p.root).unwrap().len(), 1000);
    assert!(p.items(p.root).unwrap().iter().all(|&i| i == p.root));
}
