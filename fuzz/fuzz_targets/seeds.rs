//! Writing a target's seed inputs (included by the targets that build theirs): when
//! `WALLET_FUZZ_SEED_DIR` is set, a target writes them there at start-up, named by content.
//! `scripts/fuzz-smoke.sh --seed` runs each target once that way into `fuzz/corpus/<target>/`.

use sha2::{Digest as _, Sha256};

/// Writes `seeds` to `$WALLET_FUZZ_SEED_DIR`, if set.
pub fn write(seeds: impl IntoIterator<Item = Vec<u8>>) {
    write_in("WALLET_FUZZ_SEED_DIR", seeds);
}

/// Writes `seeds` to the directory named by the environment variable `var`, if set.
pub fn write_in(var: &str, seeds: impl IntoIterator<Item = Vec<u8>>) {
    let Some(dir) = std::env::var_os(var) else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for s in seeds {
        let name = hex(&Sha256::digest(&s)[..20]);
        std::fs::write(dir.join(name), s).expect("seed file");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
