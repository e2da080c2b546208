//! Domain errors. The server maps each variant to one HTTP status and a stable `code`.

use std::fmt;

/// What went wrong in a storage backend. Backend text is kept for the log, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (e.g. a duplicate key digest or api prefix).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend failed (disk full, a statement refused, …).
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend could not be reached (connection refused or lost, no connection free in
    /// time, the server shutting down): the same request may succeed later or on another node.
    #[error("storage backend unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored row could not be decoded into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// The kind of object a `NotFound` refers to; it becomes `{kind}_not_found` at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Workspace,
    Api,
    Project,
    Key,
    RootKey,
    Webhook,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workspace => "workspace",
            Kind::Api => "api",
            Kind::Project => "project",
            Kind::Key => "key",
            Kind::RootKey => "root_key",
            Kind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure a domain operation can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist *in this workspace*. Objects of other workspaces are
    /// indistinguishable from missing ones.
    #[error("{0} not found")]
    NotFound(Kind),
    /// A request field is invalid. `field` names it (dotted path) for the client.
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    /// A permission expression could not be parsed; `position` is a 0-based char offset.
    #[error("invalid permission expression at position {position}: {message}")]
    InvalidExpression { position: usize, message: String },
    /// The request conflicts with the current state (e.g. re-enabling a revoked key).
    /// `code` is a stable snake_case string, e.g. `key_revoked`, `prefix_taken`.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The caller's root key lacks the permission named.
    #[error("missing permission {0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
