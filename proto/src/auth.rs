//! The shared token: sent as `authorization: Bearer <token>` on every call, compared in constant
//! time by the coordinator; the public label of a secret worker id; and the client type every
//! caller uses.

use subtle::ConstantTimeEq;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::tls::ClientTls;
use crate::v1::coordinator_client::CoordinatorClient;

/// Largest message either side accepts (a shard lease carries the dataset; results are chunked).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Adds the bearer token to every request.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// A token, or none.
    pub fn new(token: Option<&str>) -> Result<Self, tonic::Status> {
        token
            .map(|t| {
                format!("Bearer {t}").parse().map_err(|_| {
                    tonic::Status::invalid_argument(
                        "the token has characters a header cannot carry",
                    )
                })
            })
            .transpose()
            .map(Bearer)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A coordinator client with the token attached.
pub type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// Connects to a coordinator at `url` (`http://host:port`) over plain text.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    connect_with(url, token, &ClientTls::default()).await
}

/// Connects to a coordinator at `url`; `https://` URLs use `tls`.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    tls: &ClientTls,
) -> Result<Client, ConnectError> {
    let channel = channel(url, tls).await?;
    let bearer = Bearer::new(token).map_err(|e| ConnectError(e.message().to_string()))?;
    Ok(CoordinatorClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Asks the coordinator at `url` for its health (no token needed): its protocol and version.
pub async fn probe(url: &str, tls: &ClientTls) -> Result<crate::v1::Health, ConnectError> {
    let mut c = crate::v1::probe_client::ProbeClient::new(channel(url, tls).await?);
    c.check(crate::v1::HealthRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| ConnectError(format!("{url}: health check: {}", s.message())))
}

async fn channel(url: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ConnectError(format!("{url}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true);
    if let Some(c) = tls
        .config_for(url)
        .map_err(|e| ConnectError(e.to_string()))?
    {
        endpoint = endpoint
            .tls_config(c)
            .map_err(|e| ConnectError(format!("{url}: TLS: {}", chain(&e))))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| ConnectError(format!("{url}: {}", chain(&e))))
}

/// An error and its sources, joined: tonic's transport errors say little at the top level
/// ("transport error") and the reason (a certificate, a refused connection) sits below.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The public part of a worker or lease id (`w7` of `w7-` and 128 random bits): the rest
/// proves who the worker is, like a token, so only this part is shown or logged.
pub fn id_label(id: &str) -> &str {
    id.split_once('-').map_or(id, |(l, _)| l)
}

/// A coordinator that cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the coordinator at {0}")]
pub struct ConnectError(pub String);

/// Checks the bearer token of a request against any of `accepted` in constant time; no token
/// configured means none is required.
pub fn check_token(meta: &MetadataMap, accepted: &[&str]) -> Result<(), tonic::Status> {
    if accepted.is_empty() {
        return Ok(());
    }
    let given = meta
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| tonic::Status::unauthenticated("a token is required (--token)"))?;
    // Compare against every accepted token so the time does not say which one matched.
    let mut ok = subtle::Choice::from(0u8);
    for t in accepted {
        ok |= given.as_bytes().ct_eq(t.as_bytes());
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated("wrong token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let mut m = MetadataMap::new();
        assert!(check_token(&m, &[]).is_ok());
        assert_eq!(
            check_token(&m, &["s3cret"]).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        m.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(
            check_token(&m, &["s3cret"])
                .unwrap_err()
                .message()
                .contains("wrong token")
        );
        m.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check_token(&m, &["other", "s3cret"]).is_ok());
    }
}
