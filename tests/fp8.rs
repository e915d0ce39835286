//! FP8 read exactly: every code of both formats, through the reader, against the bit-field
//! decoder in `util` (written from the OCP FP8 definition, not from the kernels).

use ckpt_core::kernels;
use ckpt_read::Checkpoint;
use ckpt_read::dtype::float_format;

use crate::util::*;

#[test]
fn all_256_codes_of_both_formats() {
    let d = Dir::new();
    let p = d.path("codes.safetensors");
    let codes: Vec<u8> = (0..=255).collect();
    let tensor = |name: &str, dtype: &str| RawTensor {
        name: name.into(),
        dtype: dtype.into(),
        shape: vec![256],
        data: codes.clone(),
    };
    write_raw(
        &p,
        &[tensor("e4m3", "F8_E4M3"), tensor("e5m2", "F8_E5M2")],
        &[],
        0,
    );
    let ckpt = Checkpoint::open(&p).expect("a valid file");
    for (name, e4m3) in [("e4m3", true), ("e5m2", false)] {
        let t = ckpt.get(name).unwrap();
        let format = float_format(t.dtype).expect("FP8 is a float format");
        for level in ["portable", ""] {
            // The kernels pick their level once per process; the portable decoder is
            // checked directly as well.
            let mut got = vec![0f64; 256];
            if level == "portable" {
                kernels::portable_to_f64(format, ckpt.data(t), &mut got);
            } else {
                kernels::to_f64(format, ckpt.data(t), &mut got);
            }
            let (mut nans, mut infs, mut subnormals) = (0, 0, 0);
            for code in 0..=255u8 {
                let (g, w) = (got[code as usize], decode_fp8(code, e4m3));
                if w.is_nan() {
                    assert!(g.is_nan(), "{name} {code:#04x}: {g}, not NaN");
                    nans += 1;
                    continue;
                }
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{name} {code:#04x}: {g} vs {w} (sign of zero included)"
                );
                infs += w.is_infinite() as usize;
                subnormals +=
                    (code & 0x7f != 0 && (code & 0x7f) >> if e4m3 { 3 } else { 2 } == 0) as usize;
            }
            // E4M3FN: NaN at S.1111.111 only, no infinities; E5M2: 6 NaNs, ±Inf.
            assert_eq!((nans, infs), if e4m3 { (2, 0) } else { (6, 2) }, "{name}");
            assert_eq!(subnormals, if e4m3 { 14 } else { 6 }, "{name}");
        }
    }
    // Spot values from the format tables: E4M3 max 448, min subnormal 2^-9; E5M2 max 57344.
    assert_eq!(decode_fp8(0x7e, true), 448.0);
    assert_eq!(decode_fp8(0x01, true), 2f64.powi(-9));
    assert_eq!(decode_fp8(0x7b, false), 57344.0);
    assert_eq!(decode_fp8(0x01, false), 2f64.powi(-16));
}
