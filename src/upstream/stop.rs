//! `Stop` for any resource API, by service name: every API with a safety-monitored method that
//! can be stopped has `Stop(StopRequest{string name = 1; Struct extra = 99})`, so one request
//! shape, sent as `/<package>.<Service>/Stop` on the part's pooled connection, stops them all.

use std::sync::Arc;

use crate::upstream::pool::{Part, PartChannel};

/// `StopRequest` of every resource API (only `name` is sent).
#[derive(Clone, PartialEq, prost::Message)]
struct StopRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `StopResponse` (empty; unknown fields are skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct StopResponse {}

/// Calls `/<service>/Stop` with `name` on `part`; the error says why it failed.
pub async fn stop(part: Arc<Part>, service: &str, name: &str) -> Result<(), String> {
    let path = http::uri::PathAndQuery::try_from(format!("/{service}/Stop"))
        .map_err(|_| format!("{service} is not a valid service name"))?;
    let mut grpc = tonic::client::Grpc::new(PartChannel::for_part(part));
    grpc.ready().await.map_err(|e| e.to_string())?;
    let request = tonic::Request::new(StopRequest {
        name: name.to_owned(),
    });
    grpc.unary::<_, StopResponse, _>(request, path, tonic_prost::ProstCodec::default())
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}
