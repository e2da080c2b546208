//! `POST /v1/leaks`: anyone who finds a keyward key where it should not be — a person, a
//! scanner, GitHub's secret scanning — reports it, and each live key is shut off as its api's
//! `policies.leak_response` says (see `Service::report_leaks`).

use crate::error::{ApiError, ProblemResponse};
use crate::extract::{parse_json, require_json, JsonResponse};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use axum::Router;
use keyward_core::limits::Gcra;
use keyward_core::service::Actor;
use keyward_core::KeyMaterial;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/leaks", post(report_leaks))
}

/// Reports per client ip and minute (the burst too).
pub const REPORTS_PER_MINUTE: u64 = 30;
/// Keys one report may carry.
pub const MAX_KEYS: usize = 100;
/// The longest `source` kept.
pub const MAX_SOURCE_LEN: usize = 2048;
/// Client ips remembered before the idle ones are dropped.
const MAX_TRACKED: usize = 100_000;

/// keyward's report: the keys found, and where.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakReportRequest {
    /// The leaked keys, as found (at most 100). Never logged or echoed.
    #[schema(value_type = Vec<String>)]
    pub keys: Vec<KeyMaterial>,
    /// Where they were found (a URL, a file), kept in the audit log and the key's
    /// `state_reason` (with any key in it cut to its start).
    #[serde(default)]
    pub source: Option<String>,
}

/// One match of GitHub's secret scanning partner program (`[{"token", "type", "url",
/// "source"}]`). Fields GitHub may add later are ignored, so its reports keep arriving.
#[derive(Debug, Deserialize)]
struct GitHubMatch {
    token: KeyMaterial,
    #[serde(default)]
    url: Option<String>,
}

/// `202`: the report was taken. Says nothing of which keys existed (that would tell a thief
/// which stolen keys work).
#[derive(Debug, Serialize, ToSchema)]
pub struct LeakReportResponse {
    /// How many keys the report carried.
    pub received: usize,
}

/// Per-ip GCRA over the leak reports.
#[derive(Debug, Default)]
pub struct LeakThrottle {
    tats: Mutex<HashMap<IpAddr, i64>>,
}

impl LeakThrottle {
    /// Admits one report from `ip` at `now_ns`, or says in how many seconds one would be.
    fn admit(&self, ip: IpAddr, now_ns: i64) -> Result<(), u64> {
        let gcra = Gcra::new(REPORTS_PER_MINUTE, time::Duration::MINUTE);
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        if tats.len() >= MAX_TRACKED {
            tats.retain(|_, tat| *tat > now_ns);
        }
        let tat = tats.get(&ip).copied().unwrap_or(i64::MIN);
        match gcra.decide(tat, now_ns) {
            Ok(next) => {
                tats.insert(ip, next);
                Ok(())
            }
            Err(retry_at) => Err(u64::try_from(
                retry_at.saturating_sub(now_ns).div_euclid(1_000_000_000) + 1,
            )
            .unwrap_or(1)),
        }
    }
}

/// Reports leaked keys. No authentication: whoever holds a leaked key may report it. Takes
/// keyward's `{"keys": [...], "source": "..."}` or GitHub's secret-scanning payload
/// `[{"token": "...", "type": "...", "url": "...", "source": "..."}]`. Always `202` for a
/// well-formed report, whatever the keys were; 30 reports a minute per client ip.
#[utoipa::path(
    post, path = "/v1/leaks", tag = "leaks",
    request_body = LeakReportRequest,
    responses(
        (status = 202, description = "Taken; each live key is shut off as its api's `policies.leak_response` says", body = LeakReportResponse),
        (status = 400, description = "Not a report, more than 100 keys, or a source over 2048 bytes", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many reports from this ip (`Retry-After`)", body = ProblemResponse, content_type = "application/problem+json"),
    ),
)]
pub async fn report_leaks(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ip = connect.map(|Extension(ConnectInfo(addr))| addr.ip().to_canonical());
    if let Some(ip) = ip {
        let now_ns = state.service.clock().now_ms().saturating_mul(1_000_000);
        if let Err(retry_after) = state.leaks.admit(ip, now_ns) {
            let mut res = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("at most {REPORTS_PER_MINUTE} leak reports a minute from one address"),
            )
            .into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Ok(res);
        }
    }
    require_json(&headers)?;
    let reports = read_reports(&body)?;
    let reporter = Actor {
        request_id: headers
            .get(crate::error::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ip: ip.map(|ip| ip.to_string()),
        ..Actor::default()
    };
    let mut received = 0;
    for (keys, source) in &reports {
        received += keys.len();
        let acted = state
            .service
            .report_leaks(keys, source.as_deref(), &reporter)
            .await?;
        if acted > 0 {
            tracing::warn!(keys = acted, "keys reported leaked were shut off");
        }
    }
    Ok(JsonResponse(StatusCode::ACCEPTED, LeakReportResponse { received }).into_response())
}

/// Keys found in one place, and the place.
type Found = (Vec<KeyMaterial>, Option<String>);

/// The report's keys, grouped by where they were found.
fn read_reports(body: &[u8]) -> Result<Vec<Found>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let reports = if first == Some(&b'[') {
        let matches: Vec<GitHubMatch> = parse_json(body)?;
        matches
            .into_iter()
            .map(|m| (vec![m.token], m.url))
            .collect()
    } else {
        let report: LeakReportRequest = parse_json(body)?;
        vec![(report.keys, report.source)]
    };
    let keys: usize = reports.iter().map(|(k, _)| k.len()).sum();
    if keys == 0 {
        return Err(ApiError::invalid("keys", "report at least one key"));
    }
    if keys > MAX_KEYS {
        return Err(ApiError::invalid(
            "keys",
            &format!("report at most {MAX_KEYS} keys at once"),
        ));
    }
    if reports
        .iter()
        .any(|(_, s)| s.as_ref().is_some_and(|s| s.len() > MAX_SOURCE_LEN))
    {
        return Err(ApiError::invalid(
            "source",
            &format!("at most {MAX_SOURCE_LEN} bytes"),
        ));
    }
    Ok(reports)
}
