//! What a worker token may cost the coordinator: how much a worker may say about itself, how
//! many workers may register, how long a stored reason may be, how many refused results a
//! worker may send, how big a result stream may grow, and how many leases a worker may hold and
//! for how long.

use std::time::Duration;

use circuit_sweep_proto::v1::WorkerInfo;

use super::SchedError;

/// Longest name, device or model name a worker may give.
pub const MAX_WORKER_TEXT_BYTES: usize = 256;

/// Most models a worker may list.
pub const MAX_MODELS: usize = 64;

/// Registered workers at most, unless configured otherwise.
pub const DEFAULT_MAX_WORKERS: usize = 4096;

/// Refused (malformed) results a worker may send before it is dropped: a broken or hostile
/// worker must not fail other people's jobs.
pub const MAX_WORKER_REFUSALS: u32 = 3;

/// Longest failure or refusal reason stored: a reason is the worker's text, and it ends up in
/// the database and in every `status` reply.
pub const MAX_REASON_BYTES: usize = 1024;

/// Bytes allowed above a shard's largest output (names and per-tensor overhead).
pub const RESULT_MARGIN: u64 = 64 << 10;

/// The most a result stream may take, whatever its shard, unless configured otherwise.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 256 << 20;

/// Active leases one worker may hold, unless configured otherwise: a worker computes one shard
/// at a time, and a client that only leases must not take the whole queue.
pub const DEFAULT_MAX_LEASES: usize = 4;

/// How long a lease may go without progress, unless configured otherwise or the job's own
/// shards show that they take longer (loading a large model counts against it).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A lease's allowance is at least this many times the longest shard of its job so far.
pub const LEASE_SLACK: u32 = 4;

/// Refuses a registration whose texts are too long or models too many.
pub fn check_info(info: &WorkerInfo) -> Result<(), SchedError> {
    for (what, text) in [
        ("name", &info.name),
        ("device", &info.device),
        ("profile", &info.profile),
    ] {
        check_text(what, text)?;
    }
    check_models(&info.models)
}

/// Refuses a model list that is too long, or a model name that is.
pub fn check_models(models: &[String]) -> Result<(), SchedError> {
    if models.len() > MAX_MODELS {
        return Err(SchedError::WorkerInfo(format!(
            "{} models listed, more than {MAX_MODELS}",
            models.len()
        )));
    }
    models.iter().try_for_each(|m| check_text("model", m))
}

fn check_text(what: &str, text: &str) -> Result<(), SchedError> {
    if text.len() > MAX_WORKER_TEXT_BYTES {
        return Err(SchedError::WorkerInfo(format!(
            "a worker {what} of {} bytes, more than {MAX_WORKER_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// `why` cut to [`MAX_REASON_BYTES`] on a character boundary.
pub fn reason(why: &str) -> String {
    if why.len() <= MAX_REASON_BYTES {
        return why.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &why[..end], why.len())
}
