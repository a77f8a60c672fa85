//! The client side: submitting a spec with its input files, following a job, downloading its
//! results folder. `run`, `submit`, `status`, `cancel` and `results` all go through here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use circuit_sweep_common::spec::SweepSpec;
use circuit_sweep_proto::PROTOCOL_VERSION;
use circuit_sweep_proto::auth::Client;
use circuit_sweep_proto::v1::{
    Attachment, CancelRequest, JobStatus, ResultsRequest, StatusReply, StatusRequest, SubmitRequest,
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

/// Downloads a finished job's results folder into `out`.
pub async fn download(client: &mut Client, job: u64, out: &Path) -> Result<usize, ClientError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut stream = client
        .results(ResultsRequest { job_id: job })
        .await?
        .into_inner();
    let mut files = 0;
    let mut current: Option<(String, Vec<u8>)> = None;
    while let Some(c) = stream.next().await {
        let c = c?;
        // Only plain names: the coordinator never sends paths, and we never write outside `out`.
        if c.path.is_empty() || c.path.contains(['/', '\\']) || c.path.starts_with('.') {
            return Err(ClientError::Rpc(format!("refused file name {:?}", c.path)));
        }
        let (name, mut data) = match current.take() {
            Some((n, d)) if n == c.path => (n, d),
            _ => (c.path.clone(), vec![]),
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
            let path = out.join(&name);
            std::fs::write(&path, &data).map_err(io(&path))?;
            files += 1;
        } else {
            current = Some((name, data));
        }
    }
    Ok(files)
}
