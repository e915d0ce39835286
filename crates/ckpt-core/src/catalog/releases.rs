//! Official release files known by their SHA-256 (`data/official-releases.tsv`), so a
//! lineage can say "the file is the official SDXL 1.0 base" without the weights indexed.

use std::sync::OnceLock;

/// One official release file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Release {
    pub name: &'static str,
    pub file: &'static str,
    pub bytes: Option<u64>,
    pub sha256: &'static str,
    /// `sd1`, `sd2`, `sdxl`, ... (the layout id), `sdxl-refiner` or `vae`.
    pub arch: &'static str,
    pub source: &'static str,
}

/// Every release in the table, in its order.
pub fn all() -> &'static [Release] {
    static TABLE: OnceLock<Vec<Release>> = OnceLock::new();
    TABLE.get_or_init(|| {
        include_str!("data/official-releases.tsv")
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&'static str> = l.split('\t').collect();
                Release {
                    name: c[0],
                    file: c[1],
                    bytes: c[2].parse().ok(),
                    sha256: c[3],
                    arch: c[4],
                    source: c[5],
                }
            })
            .collect()
    })
}

/// The release whose SHA-256 (lowercase hex) is `sha256`.
pub fn by_sha256(sha256: &str) -> Option<&'static Release> {
    all().iter().find(|r| r.sha256 == sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_table_is_well_formed() {
        assert!(all().len() >= 8);
        for r in all() {
            assert_eq!(r.sha256.len(), 64, "{}", r.file);
            assert!(
                r.sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // The AutoV2 users see on Civitai for SDXL base is the first 10 hex digits.
        let xl = by_sha256("31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b");
        assert_eq!(xl.unwrap().file, "sd_xl_base_1.0.safetensors");
    }
}
