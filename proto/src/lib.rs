//! The circuit-sweep wire protocol, generated from `proto/circuit_sweep.proto`, with what both
//! peers need around it: the token and connections (`auth`), TLS settings (`tls`) and score
//! tensors in chunks (`tensor`), the most a shard result may take (`output_size`), and what
//! names a job's inputs (`job_inputs`).
//!
//! Every RPC that opens a session checks [`PROTOCOL_VERSION`] and refuses a peer that speaks another.

/// Version of the wire protocol; peers with another version are refused with `FAILED_PRECONDITION`
/// (2: order studies end with a consensus shard, a task workers of version 1 cannot run).
pub const PROTOCOL_VERSION: u32 = 2;

/// Generated messages and services of package `circuit_sweep.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("circuit_sweep.v1");
}

pub mod auth;
pub mod job_inputs;
pub mod output_size;
pub mod shard_output;
pub mod tensor;
pub mod tls;

/// Refuses a peer whose protocol version differs from ours, with a message naming both.
pub fn check_protocol_version(peer: u32) -> Result<(), tonic::Status> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(tonic::Status::failed_precondition(format!(
            "protocol version mismatch: peer speaks {peer}, this build speaks {PROTOCOL_VERSION}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_mismatch_is_failed_precondition() {
        assert!(check_protocol_version(PROTOCOL_VERSION).is_ok());
        let err = check_protocol_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("mismatch"));
    }
}
