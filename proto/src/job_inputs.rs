//! What names a job's inputs (its spec and attachments) on the wire: a hash, so that a worker
//! that holds them already is leased a shard without them.

use sha2::{Digest, Sha256};

use crate::v1::Attachment;

/// A worker lists at most this many inputs it holds when it asks for a lease.
pub const MAX_HELD_INPUTS: usize = 16;

/// The hex SHA-256 of a spec and its attachments (names, lengths and bytes).
pub fn inputs_hash<'a>(
    spec_toml: &str,
    attachments: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    let mut h = Sha256::new();
    h.update((spec_toml.len() as u64).to_le_bytes());
    h.update(spec_toml.as_bytes());
    for (name, data) in attachments {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// [`inputs_hash`] of a lease's attachments.
pub fn hash_of(spec_toml: &str, attachments: &[Attachment]) -> String {
    inputs_hash(
        spec_toml,
        attachments
            .iter()
            .map(|a| (a.name.as_str(), a.data.as_slice())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_and_its_data_cannot_trade_bytes() {
        let a = inputs_hash("s", [("ab", b"c".as_slice())]);
        let b = inputs_hash("s", [("a", b"bc".as_slice())]);
        assert_ne!(a, b);
        assert_eq!(a, inputs_hash("s", [("ab", b"c".as_slice())]));
        assert_eq!(a.len(), 64);
    }
}
