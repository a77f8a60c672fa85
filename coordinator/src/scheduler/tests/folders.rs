//! What a client is shown of an ended job: a lost results folder written again from the stored
//! shards, and nothing leased or queued once a job has failed.

use super::*;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_lost_results_folder_is_written_again_from_the_stored_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let (job, out) = done(&mut s, &w);
    let before = files(&out);
    assert!(before.iter().any(|(n, _)| n == "result.json"));
    std::fs::remove_dir_all(&out).unwrap();
    let ResultsAt::Rebuild(f) = s.results(job).unwrap() else {
        panic!("the folder is gone")
    };
    // One rebuild at a time, and the job is not deleted under it.
    assert!(matches!(s.results(job), Err(SchedError::NotReady(_))));
    assert!(s.delete(job).is_err());
    assert_eq!(f.rewrite().unwrap(), out);
    s.rebuilt(job);
    assert_eq!(files(&out), before, "the same folder, byte for byte");
    assert!(matches!(s.results(job).unwrap(), ResultsAt::Ready(d) if d == out));
}

#[test]
fn a_failed_job_shows_nothing_leased_or_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path());
    let w = worker(&mut s, "a");
    let job = prepared(&mut s, &w);
    let (l, _, _) = lease(&mut s, &w);
    lease(&mut s, &w);
    s.fail(&w, &l, false, "bad input").unwrap();
    let st = job_status(&s, job);
    assert_eq!(st.state, "failed");
    assert_eq!(
        (st.shards_leased, st.shards_queued, st.shards_done),
        (0, 0, 1)
    );
}
