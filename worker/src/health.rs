//! A worker's own health, for orchestrators' probes (`worker --health-listen`): `GET /livez`
//! answers 200 while every agent's heartbeat (or registration) loop keeps running, `GET /readyz`
//! 200 while every agent is registered and its last heartbeat was acknowledged by the
//! coordinator in time. Both answer a line of text saying why.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use circuit_sweep_proto::auth;

/// A loop silent this long is stuck: longer than any retry delay or heartbeat interval.
const STUCK_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Agent {
    worker_id: Option<String>,
    last_tick: Instant,
    last_ack: Option<Instant>,
    /// The coordinator's "lost after": an acknowledgement older than this is stale.
    ack_within: Duration,
}

/// The health of the agents of one worker process, keyed by agent name.
#[derive(Debug, Default)]
pub struct Health {
    agents: Mutex<BTreeMap<String, Agent>>,
}

impl Health {
    fn with(&self, name: &str, f: impl FnOnce(&mut Agent)) {
        let mut a = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let e = a.entry(name.to_string()).or_insert_with(|| Agent {
            worker_id: None,
            last_tick: Instant::now(),
            last_ack: None,
            ack_within: STUCK_AFTER,
        });
        f(e);
    }

    /// The agent's loop ran (a registration try or a heartbeat sent).
    pub fn tick(&self, name: &str) {
        self.with(name, |a| a.last_tick = Instant::now());
    }

    /// The agent registered as `worker_id`; the coordinator declares it lost after `lost_after`.
    pub fn registered(&self, name: &str, worker_id: &str, lost_after: Duration) {
        self.with(name, |a| {
            // Only the label: the probe answers anyone, and the id is the worker's secret.
            a.worker_id = Some(auth::id_label(worker_id).to_string());
            a.last_tick = Instant::now();
            a.last_ack = Some(Instant::now());
            a.ack_within = lost_after.max(Duration::from_millis(100));
        });
    }

    /// The coordinator acknowledged a heartbeat.
    pub fn acked(&self, name: &str) {
        self.with(name, |a| {
            a.last_tick = Instant::now();
            a.last_ack = Some(Instant::now());
        });
    }

    /// The agent is no longer registered (lost, draining, stopped).
    pub fn unregistered(&self, name: &str) {
        self.with(name, |a| {
            a.worker_id = None;
            a.last_ack = None;
        });
    }

    /// `Ok` with a summary while every agent's loop runs, else why not.
    pub fn live(&self, now: Instant) -> Result<String, String> {
        let a = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        for (name, s) in a.iter() {
            let quiet = now.saturating_duration_since(s.last_tick);
            if quiet > STUCK_AFTER {
                return Err(format!(
                    "{name}: no heartbeat or registration try for {quiet:.0?}"
                ));
            }
        }
        Ok(format!("{} agents running", a.len()))
    }

    /// `Ok` while every agent is registered and acknowledged in time, else why not.
    pub fn ready(&self, now: Instant) -> Result<String, String> {
        let a = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if a.is_empty() {
            return Err("no agent started yet".into());
        }
        let mut ids = vec![];
        for (name, s) in a.iter() {
            let Some(id) = &s.worker_id else {
                return Err(format!("{name}: not registered with the coordinator"));
            };
            match s.last_ack {
                Some(t) if now.saturating_duration_since(t) <= s.ack_within => {}
                _ => {
                    return Err(format!(
                        "{name}: no heartbeat acknowledged within {:.0?}",
                        s.ack_within
                    ));
                }
            }
            ids.push(format!("{name} = {id}"));
        }
        Ok(ids.join(", "))
    }
}

fn answer(r: Result<String, String>) -> (StatusCode, String) {
    match r {
        Ok(m) => (StatusCode::OK, format!("ok: {m}\n")),
        Err(m) => (StatusCode::SERVICE_UNAVAILABLE, format!("{m}\n")),
    }
}

/// Serves `/livez` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: std::sync::Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (h1, h2) = (health.clone(), health);
    let app = Router::new()
        .route(
            "/livez",
            get(move || async move { answer(h1.live(Instant::now())) }),
        )
        .route(
            "/readyz",
            get(move || async move { answer(h2.ready(Instant::now())) }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_registered_and_acknowledged() {
        let h = Health::default();
        let t0 = Instant::now();
        assert!(h.ready(t0).is_err());
        h.tick("w");
        assert!(h.live(Instant::now()).is_ok());
        assert!(
            h.ready(Instant::now())
                .unwrap_err()
                .contains("not registered")
        );
        h.registered("w", "w1-0123456789abcdef", Duration::from_millis(200));
        assert_eq!(h.ready(Instant::now()).unwrap(), "w = w1");
        let later = Instant::now() + Duration::from_millis(500);
        assert!(
            h.ready(later)
                .unwrap_err()
                .contains("no heartbeat acknowledged")
        );
        h.acked("w");
        assert!(h.ready(Instant::now()).is_ok());
        h.unregistered("w");
        assert!(h.ready(Instant::now()).is_err());
    }

    #[test]
    fn a_silent_loop_is_not_live() {
        let h = Health::default();
        h.tick("a");
        h.tick("b");
        assert!(h.live(Instant::now()).is_ok());
        let later = Instant::now() + STUCK_AFTER + Duration::from_secs(1);
        assert!(h.live(later).unwrap_err().starts_with("a: "));
    }
}
