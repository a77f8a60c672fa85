//! Interoperability with MIB, the mechanistic interpretability benchmark: its circuit files
//! (a graph's `cfg`, every node and edge with a score and `in_graph`), its names, its rule for
//! taking a circuit from edge scores, and conversions from and to our runs.

pub mod export;
pub mod file;
pub mod graph;
pub mod import;
pub mod names;
pub mod scores;
pub mod select;

pub use file::{EdgeEntry, FileError, MibFile, NodeEntry};
pub use graph::{ConfigError, MibConfig};
pub use names::{MibNode, NameError};

/// SHA-256 of MIB's published example circuit, `ioi-eap-ig.json` (tests/fixtures/mib/README.md).
pub const EXAMPLE_SHA256: &str = "2665ef9e7609f4ab9bf8235cd7351a8b54a22d73c463ad0cb3faa651b233d206";

/// MIB's published example circuit (GPT-2 small on IOI, edge scores by EAP-IG), for the tests
/// that read it. It is not redistributed here (tests/fixtures/mib/README.md says where to get
/// it); found at `$CIRCUIT_SWEEP_MIB_FIXTURE`, else `target/mib/ioi-eap-ig.json` in the
/// repository. Panics, saying what to do, when it is not there or is not that file
/// ([`EXAMPLE_SHA256`]).
#[doc(hidden)]
pub fn example_fixture() -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    const NAME: &str = "ioi-eap-ig.json";
    const HELP: &str = "it is not redistributed here; see tests/fixtures/mib/README.md";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lies in the workspace");
    let path = match std::env::var_os("CIRCUIT_SWEEP_MIB_FIXTURE") {
        Some(p) => p.into(),
        None => {
            let place = root.join("target/mib").join(NAME);
            if !place.is_file() {
                panic!(
                    "MIB's {NAME} is in neither $CIRCUIT_SWEEP_MIB_FIXTURE (unset) nor {}: {HELP}",
                    place.display()
                );
            }
            place
        }
    };
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("MIB's {NAME}: {}: {e}; {HELP}", path.display()));
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        sha == EXAMPLE_SHA256,
        "{} has the SHA-256 {sha}, not {EXAMPLE_SHA256} of MIB's {NAME}; {HELP}",
        path.display()
    );
    path
}

/// Synthetic MIB files for the tests that need no published one.
#[cfg(test)]
pub(crate) mod testing {
    use super::{MibConfig, MibFile};

    /// GPT-2 small's `cfg`, as MIB writes it.
    pub(crate) fn gpt2_small() -> MibConfig {
        MibConfig {
            n_layers: 12,
            n_heads: 12,
            parallel_attn_mlp: false,
            d_model: 768,
            extra: vec![],
        }
    }

    /// SplitMix64: seeded pseudo-random numbers.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// In [-0.5, 0.5) times 10^-k, k from 0 to 8: scores of either sign, spread over
        /// magnitudes as an attribution method's are (and spelled with exponents below 1e-4).
        pub(crate) fn score(&mut self) -> f64 {
            let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            unit * 10f64.powi(-((self.next() % 9) as i32))
        }
    }

    /// A file of `cfg`'s graph, every edge scored from `seed`, nothing in the graph but
    /// `logits`, as [`MibFile::empty`] makes it.
    pub(crate) fn synthetic(cfg: MibConfig, seed: u64) -> MibFile {
        let mut rng = Rng(seed);
        let mut f = MibFile::empty(cfg);
        for e in &mut f.edges {
            e.score = rng.score();
        }
        f
    }
}
