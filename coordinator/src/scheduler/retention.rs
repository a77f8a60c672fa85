//! Retention: a finished job is deleted by hand (`delete`) or by age (`keep_finished`), its
//! rows and results folder with it; its id is never given again.

use std::path::PathBuf;

use super::{SchedError, Scheduler};

impl Scheduler {
    /// Deletes the finished jobs that ended more than `keep_finished` ago; returns their
    /// results folders.
    pub(super) fn delete_old_jobs(&mut self) -> Vec<PathBuf> {
        let Some(keep) = self.cfg.keep_finished else {
            return vec![];
        };
        let before = self.clock.unix() - keep.as_secs_f64();
        let old: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.rec.state.is_final() && !j.writing)
            // A job without an end time (stored before they were kept) is left alone.
            .filter(|j| j.rec.finished_unix.is_some_and(|t| t < before))
            .map(|j| j.rec.id)
            .collect();
        let mut dirs = vec![];
        for id in old {
            match self.delete(id) {
                Ok(dir) => {
                    tracing::info!("job {id} deleted: finished more than {keep:?} ago");
                    dirs.push(dir);
                }
                Err(e) => {
                    // Tried again on the next tick; the folders of the jobs deleted so far still go back.
                    tracing::error!("deleting job {id}: {e}");
                    break;
                }
            }
        }
        dirs
    }

    /// Deletes a finished job (done, failed, cancelled): its record and stored results leave
    /// memory and the database; its id is not given again. Returns its results folder, for
    /// the caller to remove outside the lock.
    pub fn delete(&mut self, job_id: u64) -> Result<PathBuf, SchedError> {
        let job = self
            .jobs
            .get(&job_id)
            .ok_or(SchedError::UnknownJob(job_id))?;
        if !job.rec.state.is_final() {
            return Err(SchedError::NotFinal {
                job: job_id,
                state: job.rec.state.name(),
            });
        }
        if job.writing {
            // Cancelled while it aggregated: its folder would be written after the delete.
            return Err(SchedError::NotReady(format!(
                "job {job_id}'s plan or results folder is still being written: delete it in a moment"
            )));
        }
        self.store.delete_job(job_id)?;
        self.jobs.remove(&job_id);
        Ok(self.cfg.results_dir.join(job_id.to_string()))
    }
}
