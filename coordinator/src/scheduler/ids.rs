//! Worker and lease ids: a short public label (`w7`, `l42`) for logs and `status`, and 128 bits
//! from the OS's random source after it. A worker proves who it is with its id alone, so an id
//! must be as hard to guess as a token, and only its label is ever shown to anyone else.

pub use circuit_sweep_proto::auth::id_label as label;

use super::SchedError;

/// A new id: `{prefix}{n}-{32 hex digits}`.
pub(super) fn secret(prefix: char, n: u64) -> Result<String, SchedError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SchedError::Random(e.to_string()))?;
    Ok(format!("{prefix}{n}-{:032x}", u128::from_le_bytes(bytes)))
}
