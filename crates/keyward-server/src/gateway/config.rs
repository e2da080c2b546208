//! `gateway.toml`: parsed, validated and compiled once, so the request path only compares.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! api_id = "api_…"
//! key_from = ["header:x-api-key", "bearer"]   # tried in order; query strings only if named
//! trusted_proxies = ["10.0.0.0/8"]            # peers whose X-Forwarded-For is believed
//! [timeouts]
//! connect = "2s"                              # TCP connect to an upstream
//! upstream = "30s"                            # request sent → response headers received
//! [[route]]
//! path = "/orders/*"                          # glob: `*` within a segment, `**` across
//! methods = ["GET"]                           # omitted: any method
//! upstream = "http://127.0.0.1:9000"
//! upstream_protocol = "http1"                 # or "h2c" (HTTP/2 without TLS)
//! permissions = "orders.read"
//! cost = 1
//! [[route]]
//! path = "/health"
//! upstream = "http://127.0.0.1:9000"
//! public = true                               # no key needed
//! ```

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};
use ipnet::IpNet;
use keyward_core::perm::{self, Expr};
use keyward_core::verify::{glob_match, MAX_GLOB_LEN};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// A configuration error: the file, the line and column when known, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway config {}", self.file.display())?;
        if let Some((line, column)) = self.at {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where the key is read from, tried in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `header:NAME`: the whole header value.
    Header(HeaderName),
    /// `bearer`: `Authorization: Bearer KEY`.
    Bearer,
    /// `query:NAME`: a query-string parameter.
    Query(String),
}

/// How the gateway talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over cleartext TCP (prior knowledge), multiplexed on one connection.
    H2c,
}

/// One `[[route]]`, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub upstream_scheme: Scheme,
    pub upstream_authority: Authority,
    pub protocol: UpstreamProtocol,
    /// Parsed once here; `None` when the route needs no permission (or is public).
    pub permissions: Option<Expr>,
    pub cost: u64,
    pub public: bool,
}

impl Route {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == method))
            && glob_match(&self.path, path)
    }
}

/// The whole gateway configuration, compiled.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub api_id: String,
    pub key_from: Vec<KeySource>,
    pub trusted_proxies: Vec<IpNet>,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub routes: Vec<Route>,
}

impl GatewayConfig {
    /// Reads and compiles `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            at: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Compiles `text`, the contents of `file` (named in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: file.to_owned(),
            at: span.map(|s| line_col(text, s.start)),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            err(
                e.span(),
                e.message()
                    .replace("unknown field", "unknown key")
                    .to_owned(),
            )
        })?;

        let listen = raw.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            err(
                Some(raw.listen.span()),
                format!(
                    "listen: {:?} is not an address like 127.0.0.1:8080",
                    raw.listen.get_ref()
                ),
            )
        })?;

        let api_id = raw.api_id.get_ref().trim().to_owned();
        if !api_id.starts_with("api_") || api_id.len() < 5 {
            return Err(err(
                Some(raw.api_id.span()),
                format!("api_id: {api_id:?} is not an api id (api_…)"),
            ));
        }

        let key_from = match &raw.key_from {
            None => vec![
                KeySource::Header(HeaderName::from_static("x-api-key")),
                KeySource::Bearer,
            ],
            Some(list) if list.get_ref().is_empty() => {
                return Err(err(
                    Some(list.span()),
                    "key_from: name at least one source".to_owned(),
                ))
            }
            Some(list) => list
                .get_ref()
                .iter()
                .map(|s| parse_key_source(s.get_ref()).map_err(|m| err(Some(s.span()), m)))
                .collect::<Result<_, _>>()?,
        };

        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|s| parse_net(s.get_ref()).map_err(|m| err(Some(s.span()), m)))
            .collect::<Result<_, _>>()?;

        let timeouts = raw.timeouts.unwrap_or_default();
        let duration = |d: Option<Spanned<String>>, name: &str, default: Duration| match d {
            None => Ok(default),
            Some(s) => parse_timeout(s.get_ref())
                .map_err(|m| err(Some(s.span()), format!("timeouts.{name}: {m}"))),
        };
        let connect_timeout = duration(timeouts.connect, "connect", DEFAULT_CONNECT_TIMEOUT)?;
        let upstream_timeout = duration(timeouts.upstream, "upstream", DEFAULT_UPSTREAM_TIMEOUT)?;

        if raw.route.is_empty() {
            return Err(err(
                None,
                "no [[route]]: every request would be refused; add at least one".to_owned(),
            ));
        }
        let routes = raw
            .route
            .into_iter()
            .map(|r| compile_route(r, &err))
            .collect::<Result<_, _>>()?;

        Ok(Self {
            file: file.to_owned(),
            listen,
            api_id,
            key_from,
            trusted_proxies,
            connect_timeout,
            upstream_timeout,
            routes,
        })
    }

    /// The first route matching `method` and `path`.
    pub fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(method, path))
    }

    /// Whether the socket peer is a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.trusted_proxies
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<String>,
    api_id: Spanned<String>,
    key_from: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Spanned<String>>,
    upstream: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    upstream: Spanned<String>,
    upstream_protocol: Option<UpstreamProtocol>,
    permissions: Option<Spanned<String>>,
    cost: Option<Spanned<u64>>,
    #[serde(default)]
    public: bool,
}

fn compile_route(
    raw: Spanned<RawRoute>,
    err: &impl Fn(Option<std::ops::Range<usize>>, String) -> ConfigError,
) -> Result<Route, ConfigError> {
    let raw = raw.into_inner();

    let path = raw.path.get_ref().clone();
    if !path.starts_with('/') {
        return Err(err(
            Some(raw.path.span()),
            format!("route.path: {path:?} must start with /"),
        ));
    }
    if path.len() > MAX_GLOB_LEN {
        return Err(err(
            Some(raw.path.span()),
            format!("route.path: at most {MAX_GLOB_LEN} bytes"),
        ));
    }

    let methods = match &raw.methods {
        None => None,
        Some(list) if list.get_ref().is_empty() => {
            return Err(err(
                Some(list.span()),
                "route.methods: must not be empty; omit it to allow any method".to_owned(),
            ))
        }
        Some(list) => Some(
            list.get_ref()
                .iter()
                .map(|m| {
                    let name = m.get_ref().trim().to_ascii_uppercase();
                    Method::from_bytes(name.as_bytes()).map_err(|_| {
                        err(
                            Some(m.span()),
                            format!("route.methods: {:?} is not an HTTP method", m.get_ref()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    let (upstream_scheme, upstream_authority) =
        parse_upstream(raw.upstream.get_ref()).map_err(|m| err(Some(raw.upstream.span()), m))?;

    if raw.public {
        if let Some(p) = &raw.permissions {
            return Err(err(
                Some(p.span()),
                "route.permissions: a public route checks no key, so it cannot require \
                 permissions"
                    .to_owned(),
            ));
        }
        if let Some(c) = &raw.cost {
            return Err(err(
                Some(c.span()),
                "route.cost: a public route charges no key".to_owned(),
            ));
        }
    }
    let permissions = match &raw.permissions {
        None => None,
        Some(p) => Some(perm::parse(p.get_ref()).map_err(|e| {
            err(
                Some(p.span()),
                format!(
                    "route.permissions: {} (at character {})",
                    e.message,
                    e.position + 1
                ),
            )
        })?),
    };
    let cost = raw.cost.map_or(1, Spanned::into_inner);

    Ok(Route {
        path,
        methods,
        upstream_scheme,
        upstream_authority,
        protocol: raw.upstream_protocol.unwrap_or(UpstreamProtocol::Http1),
        permissions,
        cost,
        public: raw.public,
    })
}

fn parse_key_source(s: &str) -> Result<KeySource, String> {
    let s = s.trim();
    if s == "bearer" {
        return Ok(KeySource::Bearer);
    }
    if let Some(name) = s.strip_prefix("header:") {
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("key_from: {name:?} is not a header name"))?;
        if name == http::header::AUTHORIZATION {
            return Err("key_from: use \"bearer\" for the Authorization header".to_owned());
        }
        return Ok(KeySource::Header(name));
    }
    if let Some(name) = s.strip_prefix("query:") {
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "key_from: {name:?} is not a query parameter name ([A-Za-z0-9._-]+)"
            ));
        }
        return Ok(KeySource::Query(name.to_owned()));
    }
    Err(format!(
        "key_from: {s:?} is not a key source; use \"header:NAME\", \"bearer\" or \"query:NAME\""
    ))
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("trusted_proxies: {s:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)")
        })
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = keyward_core::duration::parse(s)?;
    if d <= time::Duration::ZERO {
        return Err("must be positive".to_owned());
    }
    Duration::try_from(d).map_err(|_| "out of range".to_owned())
}

fn parse_upstream(s: &str) -> Result<(Scheme, Authority), String> {
    let uri: Uri = s
        .trim()
        .parse()
        .map_err(|_| format!("route.upstream: {s:?} is not a URL like http://127.0.0.1:9000"))?;
    let parts = uri.into_parts();
    if parts.scheme.as_ref() != Some(&Scheme::HTTP) {
        return Err(format!(
            "route.upstream: {s:?} must start with http:// (TLS to upstreams is not supported)"
        ));
    }
    let Some(authority) = parts.authority else {
        return Err(format!("route.upstream: {s:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("route.upstream: {s:?} must not carry credentials"));
    }
    if parts
        .path_and_query
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!(
            "route.upstream: {s:?} must be scheme://host:port only; the request path is kept"
        ));
    }
    Ok((Scheme::HTTP, authority))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::parse(Path::new("gw.toml"), text)
    }

    const BASE: &str = "listen = \"127.0.0.1:0\"\napi_id = \"api_1\"\n";

    #[test]
    fn the_design_example_compiles_with_defaults() {
        let c = parse(&format!(
            "{BASE}[[route]]\npath = \"/orders/*\"\nmethods = [\"get\"]\n\
             upstream = \"http://127.0.0.1:9000\"\npermissions = \"orders.read\"\n\
             [[route]]\npath = \"/health\"\nupstream = \"http://127.0.0.1:9000/\"\npublic = true\n"
        ))
        .expect("valid");
        assert_eq!(
            c.key_from,
            [
                KeySource::Header(HeaderName::from_static("x-api-key")),
                KeySource::Bearer
            ]
        );
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.routes.len(), 2);
        assert!(c
            .route(&Method::GET, "/orders/42")
            .is_some_and(|r| !r.public));
        assert!(c.route(&Method::POST, "/orders/42").is_none());
        assert!(c.route(&Method::POST, "/health").is_some_and(|r| r.public));
        assert!(c.route(&Method::GET, "/other").is_none());
        assert_eq!(c.routes[0].cost, 1);
        assert_eq!(c.routes[0].upstream_authority.as_str(), "127.0.0.1:9000");
    }

    #[test]
    fn errors_name_the_file_line_and_problem() {
        let cases = [
            (format!("{BASE}bogus = 1\n[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\n"), 3, "unknown key `bogus`"),
            (format!("{BASE}[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\npermissions = \"a AND\"\n"), 6, "route.permissions"),
            (format!("{BASE}[[route]]\npath = \"x\"\nupstream = \"http://h:1\"\n"), 4, "must start with /"),
            (format!("{BASE}[[route]]\npath = \"/\"\nupstream = \"https://h:1\"\n"), 5, "http://"),
            (format!("{BASE}key_from = [\"cookie:x\"]\n[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\n"), 3, "key_from"),
            (format!("{BASE}trusted_proxies = [\"10.0.0.0/99\"]\n[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\n"), 3, "trusted_proxies"),
            (format!("{BASE}[timeouts]\nconnect = \"soon\"\n[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\n"), 4, "timeouts.connect"),
            (format!("{BASE}[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\npublic = true\ncost = 2\n"), 7, "public"),
            (format!("{BASE}[[route]]\npath = \"/\"\nupstream = \"http://h:1\"\nupstream_protocol = \"h3\"\n"), 6, "unknown variant"),
        ];
        for (text, line, what) in cases {
            let e = parse(&text).expect_err(what);
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("gateway config gw.toml:{line}:")),
                "{shown}"
            );
            assert!(shown.contains(what), "{shown}");
        }
        let e = parse(BASE).expect_err("no routes");
        assert!(e.to_string().contains("no [[route]]"), "{e}");
    }

    #[test]
    fn trusted_proxies_match_ipv4_mapped_peers() {
        let c = parse(&format!(
            "{BASE}trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[[route]]\npath = \"/**\"\nupstream = \"http://h:1\"\n"
        ))
        .expect("valid");
        assert!(c.is_trusted("10.1.2.3".parse().expect("ip")));
        assert!(c.is_trusted("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(c.is_trusted("::1".parse().expect("ip")));
        assert!(!c.is_trusted("127.0.0.1".parse().expect("ip")));
    }
}
