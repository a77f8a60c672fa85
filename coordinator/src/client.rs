//! The client side: submitting a spec with its input files, following a job, downloading its
//! results folder. `run`, `submit`, `status`, `cancel`, `delete` and `results` all go through
//! here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::auth::{Client, MAX_MESSAGE_BYTES};
use circuit_sweep_proto::v1::{
    Attachment, CancelRequest, DeleteRequest, FileChunk, JobStatus, ResultsRequest, StatusReply,
    StatusRequest, SubmitRequest,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_stream::StreamExt;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The spec cannot be used (names the file and field).
    #[error(transparent)]
    Spec(#[from] circuit_sweep_common::spec::SpecError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The coordinator refused or failed a call.
    #[error("coordinator: {0}")]
    Rpc(String),
    /// The submission is larger than one message may be.
    #[error(
        "{spec}: the spec and its files are {mib:.1} MiB, more than the {limit} MiB one submission may carry"
    )]
    TooLarge {
        /// The spec file.
        spec: PathBuf,
        /// The submission's size.
        mib: f64,
        /// The limit.
        limit: usize,
    },
    /// The job ended without results.
    #[error("job {job} {state}: {error}")]
    JobEnded {
        /// Job.
        job: u64,
        /// `failed` or `cancelled`.
        state: String,
        /// Why.
        error: String,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(format!("{:?}: {}", s.code(), s.message()))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The most a submission (spec and files) may weigh: one message, less room for its framing.
pub const MAX_SUBMISSION_BYTES: usize = MAX_MESSAGE_BYTES - (1 << 20);

/// A spec ready to send: validated, its model path made absolute, its input files attached.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The spec file's stem.
    pub name: String,
    /// The spec, parsed and validated once.
    pub spec: SweepSpec,
    /// The spec as sent.
    pub spec_toml: String,
    /// Input files, named as the spec names them.
    pub attachments: Vec<(String, Vec<u8>)>,
}

impl Submission {
    /// Reads and validates `spec_path` (every error names the field, before any forward pass)
    /// and the files it names.
    pub fn from_file(spec_path: &Path) -> Result<Self, ClientError> {
        let mut spec = SweepSpec::read(spec_path)?;
        let dir = spec_path.parent().unwrap_or(Path::new(""));
        // Workers resolve the model on their own machine: send an absolute path when the spec's
        // relative path exists here (a shared file system), else the path as written.
        if let Some(p) = &spec.model.path
            && p.is_relative()
        {
            let here = dir.join(p);
            if here.exists() {
                spec.model.path = Some(std::path::absolute(&here).unwrap_or(here));
            }
        }
        let mut attachments = vec![];
        for f in spec.input_files() {
            let local = if f.is_absolute() {
                f.clone()
            } else {
                dir.join(f)
            };
            let data = std::fs::read(&local).map_err(io(&local))?;
            attachments.push((f.display().to_string(), data));
        }
        let spec_toml = toml::to_string(&spec).expect("specs serialize");
        // Said here, with the limit, rather than as the transport's protocol error.
        let bytes = spec_toml.len()
            + attachments
                .iter()
                .map(|(n, d)| n.len() + d.len())
                .sum::<usize>();
        if bytes > MAX_SUBMISSION_BYTES {
            return Err(ClientError::TooLarge {
                spec: spec_path.to_path_buf(),
                mib: bytes as f64 / f64::from(1 << 20),
                limit: MAX_SUBMISSION_BYTES >> 20,
            });
        }
        Ok(Submission {
            name: spec_path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            spec,
            spec_toml,
            attachments,
        })
    }
}

/// Submits a job and returns its id.
pub async fn submit(client: &mut Client, s: &Submission) -> Result<u64, ClientError> {
    let r = client
        .submit(SubmitRequest {
            protocol_version: PROTOCOL_VERSION,
            name: s.name.clone(),
            spec_toml: s.spec_toml.clone(),
            attachments: s
                .attachments
                .iter()
                .map(|(name, data)| Attachment {
                    name: name.clone(),
                    data: data.clone(),
                })
                .collect(),
        })
        .await?;
    Ok(r.into_inner().job_id)
}

/// Status of one job (or all with `None`) and the workers.
pub async fn status(client: &mut Client, job: Option<u64>) -> Result<StatusReply, ClientError> {
    Ok(client
        .status(StatusRequest {
            job_id: job.unwrap_or(0),
        })
        .await?
        .into_inner())
}

/// Cancels a job.
pub async fn cancel(client: &mut Client, job: u64) -> Result<(), ClientError> {
    client.cancel(CancelRequest { job_id: job }).await?;
    Ok(())
}

/// Deletes a finished job: its record, stored results and results folder.
pub async fn delete(client: &mut Client, job: u64) -> Result<(), ClientError> {
    client.delete(DeleteRequest { job_id: job }).await?;
    Ok(())
}

/// Polls until the job ends, with a progress bar of shards when `progress` (and stderr is a
/// terminal). Errors when the job failed or was cancelled.
pub async fn wait(client: &mut Client, job: u64, progress: bool) -> Result<JobStatus, ClientError> {
    let show = progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let pb = if show {
        let pb = ProgressBar::new(1);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg:>14} [{bar:40}] {pos}/{len} shards, {elapsed} elapsed, ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    loop {
        let reply = status(client, Some(job)).await?;
        let j = reply
            .jobs
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Rpc(format!("no job {job}")))?;
        pb.set_length(j.shards_total as u64);
        pb.set_position(j.shards_done as u64);
        pb.set_message(format!("job {job} {}", j.state));
        match j.state.as_str() {
            "done" => {
                pb.finish_and_clear();
                return Ok(j);
            }
            "failed" | "cancelled" => {
                pb.finish_and_clear();
                return Err(ClientError::JobEnded {
                    job,
                    state: j.state,
                    error: j.error,
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Makes the results folder `out` before any work, so that a place that cannot hold one (an
/// existing file, a folder without write permission) is an error now rather than after the
/// sweep.
pub fn make_out(out: &Path) -> Result<(), ClientError> {
    if out.exists() && !out.is_dir() {
        return Err(ClientError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a folder: the results folder cannot be written there",
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    tempfile::tempfile_in(out).map_err(io(out))?;
    Ok(())
}

/// Downloads a finished job's results folder into `out`.
pub async fn download(client: &mut Client, job: u64, out: &Path) -> Result<usize, ClientError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut stream = client
        .results(ResultsRequest { job_id: job })
        .await?
        .into_inner();
    let mut files = Files::new(out);
    while let Some(c) = stream.next().await {
        files.push(c?)?;
    }
    files.finish()
}

/// A results stream written as files into one folder, each once its last chunk arrives.
struct Files<'a> {
    out: &'a Path,
    current: Option<(String, Vec<u8>)>,
    written: usize,
}

impl<'a> Files<'a> {
    fn new(out: &'a Path) -> Self {
        Files {
            out,
            current: None,
            written: 0,
        }
    }

    fn push(&mut self, c: FileChunk) -> Result<(), ClientError> {
        // Only plain names: the coordinator never sends paths, and we never write outside `out`.
        if c.path.is_empty() || c.path.contains(['/', '\\']) || c.path.starts_with('.') {
            return Err(ClientError::Rpc(format!("refused file name {:?}", c.path)));
        }
        let (name, mut data) = match self.current.take() {
            Some((n, d)) if n == c.path => (n, d),
            Some((n, d)) => return Err(cut(&n, d.len())),
            None => (c.path.clone(), vec![]),
        };
        if c.offset != data.len() as u64 {
            return Err(ClientError::Rpc(format!(
                "{name}: chunk at {}, expected {}",
                c.offset,
                data.len()
            )));
        }
        data.extend_from_slice(&c.data);
        if c.last {
            let path = self.out.join(&name);
            std::fs::write(&path, &data).map_err(io(&path))?;
            self.written += 1;
        } else {
            self.current = Some((name, data));
        }
        Ok(())
    }

    /// The number of files written; an error if the stream ended inside a file.
    fn finish(self) -> Result<usize, ClientError> {
        match self.current {
            Some((name, data)) => Err(cut(&name, data.len())),
            None => Ok(self.written),
        }
    }
}

fn cut(name: &str, bytes: usize) -> ClientError {
    ClientError::Rpc(format!(
        "{name}: the results stream ended after {bytes} bytes, before the file's last chunk"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_beyond_one_message_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("big.toml");
        std::fs::write(&spec, "[data]\nfile = \"big.jsonl\"\n").unwrap();
        let line = "{\"clean\":\"a\",\"corrupt\":\"b\",\"answer\":\"c\",\"wrong\":\"d\"}\n";
        std::fs::write(
            dir.path().join("big.jsonl"),
            line.repeat((MAX_SUBMISSION_BYTES + (1 << 20)) / line.len()),
        )
        .unwrap();
        let e = Submission::from_file(&spec).unwrap_err().to_string();
        assert!(
            e.contains("big.toml: the spec and its files are 64.0 MiB, more than the 63 MiB"),
            "{e}"
        );
    }

    #[test]
    fn a_file_whose_stream_was_cut_is_an_error_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = |path: &str, offset: u64, last: bool| FileChunk {
            path: path.into(),
            offset,
            data: vec![7; 4],
            last,
        };
        let mut f = Files::new(dir.path());
        f.push(chunk("a.csv", 0, true)).unwrap();
        f.push(chunk("b.csv", 0, false)).unwrap();
        let e = f.finish().unwrap_err().to_string();
        assert!(
            e.contains("b.csv: the results stream ended after 4 bytes"),
            "{e}"
        );
        // Cut, then another file begins.
        let mut f = Files::new(dir.path());
        f.push(chunk("c.csv", 0, false)).unwrap();
        let e = f.push(chunk("d.csv", 0, true)).unwrap_err().to_string();
        assert!(e.contains("c.csv: the results stream ended"), "{e}");
        assert!(dir.path().join("a.csv").is_file() && !dir.path().join("b.csv").exists());
    }

    #[test]
    fn the_results_folder_is_made_first_and_a_file_in_its_place_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        make_out(&out).unwrap();
        assert!(out.is_dir());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = make_out(&file).unwrap_err().to_string();
        assert!(e.contains("exists and is not a folder"), "{e}");
    }
}
