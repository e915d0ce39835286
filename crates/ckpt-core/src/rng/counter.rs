//! Counter-based pseudo-random numbers: any element of any tensor can be generated on its
//! own, in any order, on any thread, and always comes out the same.

/// SplitMix64's finaliser: a bijective 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a key name: the per-tensor part of a stream's identity.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A stream of numbers for one (seed, tensor) pair.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    origin: u64,
}

impl Stream {
    pub fn new(seed: u64, key_hash: u64) -> Stream {
        Stream {
            origin: mix(mix(seed.wrapping_add(GAMMA)) ^ key_hash),
        }
    }

    /// The `j`-th raw 64-bit value.
    pub fn bits(&self, j: u64) -> u64 {
        mix(self.origin.wrapping_add(j.wrapping_mul(GAMMA)))
    }

    /// An approximately standard normal value (Irwin-Hall sum of four 16-bit uniforms,
    /// rescaled to variance 1; support ±3.46).
    pub fn normal(&self, j: u64) -> f64 {
        let u = self.bits(j);
        let s = (u & 0xffff) + ((u >> 16) & 0xffff) + ((u >> 32) & 0xffff) + (u >> 48);
        // Mean of the sum 2·65535, standard deviation 65536·√(4/12) ≈ 37837.2.
        (s as f64 - 131_070.0) * (1.0 / 37_837.227_1)
    }

    /// A uniform value in [0, 1).
    pub fn uniform(&self, j: u64) -> f64 {
        (self.bits(j) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_moments() {
        let s = Stream::new(7, key_hash("x"));
        let n = 200_000;
        let (mut m1, mut m2) = (0.0, 0.0);
        for j in 0..n {
            let z = s.normal(j);
            m1 += z;
            m2 += z * z;
        }
        let mean = m1 / n as f64;
        let var = m2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }

    #[test]
    fn streams_differ_by_seed_and_key() {
        let a = Stream::new(1, key_hash("k"));
        let b = Stream::new(2, key_hash("k"));
        let c = Stream::new(1, key_hash("l"));
        assert_ne!(a.bits(0), b.bits(0));
        assert_ne!(a.bits(0), c.bits(0));
        assert_eq!(a.bits(5), Stream::new(1, key_hash("k")).bits(5));
    }
}
