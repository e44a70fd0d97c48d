//! The app layer's error type: request-level failures (the function never ran, or the
//! system failed). Failures *of* a function are not errors here: they are a
//! [`crate::FunctionFailure`] inside a successful [`crate::FunctionResponse`].

use nimbus_engine::EngineError;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    #[error("invalid tenant name {0:?}: names match ^[a-z][a-z0-9-]{{0,62}}$")]
    InvalidTenantName(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("missing or invalid admin key")]
    Unauthenticated,
    /// A user's token was refused: the reason, never the token.
    #[error("invalid auth token: {0}")]
    InvalidAuthToken(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("tenant {tenant:?} is overloaded: {detail}")]
    Overloaded {
        tenant: String,
        detail: String,
        retry_after_secs: u64,
        /// Which bound refused the call: a stable name clients and dashboards can match
        /// (`limit` in the JSON error; see docs/http-api.md).
        limit: &'static str,
    },
    #[error("tenant {tenant:?} is unavailable: {detail}")]
    Unavailable { tenant: String, detail: String },
    /// A push that cannot be applied (bad module, schema mismatch); shown by the CLI.
    #[error("{message}")]
    PushFailed { code: &'static str, message: String },
    /// `query_at_ts` asked for a snapshot outside the retained window.
    #[error("{0}")]
    SnapshotUnavailable(String),
    /// An environment variable change that breaks a rule or a limit.
    #[error("{0}")]
    InvalidEnvironmentVariable(String),
    /// The request conflicts with the state of what it names (a tenant already in its own
    /// database, a server that still holds tenants).
    #[error("{0}")]
    Conflict(String),
    /// Something the admin API names (other than a tenant) does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// Stable code for the JSON body (see docs/http-api.md).
    pub fn code(&self) -> &'static str {
        match self {
            AppError::TenantNotFound(_) => "TenantNotFound",
            AppError::TenantExists(_) => "TenantExists",
            AppError::InvalidTenantName(_) => "InvalidTenantName",
            AppError::BadRequest(_) => "BadJsonInput",
            AppError::InvalidValue(_) => "InvalidValue",
            AppError::Unauthenticated => "Unauthenticated",
            AppError::InvalidAuthToken(_) => "InvalidAuthToken",
            AppError::Forbidden(_) => "Forbidden",
            AppError::Overloaded { .. } => "Overloaded",
            AppError::Unavailable { .. } => "TenantUnavailable",
            AppError::PushFailed { code, .. } => code,
            AppError::SnapshotUnavailable(_) => "SnapshotUnavailable",
            AppError::InvalidEnvironmentVariable(_) => "InvalidEnvironmentVariable",
            AppError::Conflict(_) => "Conflict",
            AppError::NotFound(_) => "NotFound",
            AppError::Internal(_) => "InternalServerError",
        }
    }

    /// HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            AppError::TenantNotFound(_) | AppError::NotFound(_) => 404,
            AppError::TenantExists(_) | AppError::Conflict(_) => 409,
            AppError::InvalidTenantName(_)
            | AppError::BadRequest(_)
            | AppError::InvalidValue(_)
            | AppError::PushFailed { .. }
            | AppError::SnapshotUnavailable(_)
            | AppError::InvalidEnvironmentVariable(_) => 400,
            AppError::Unauthenticated | AppError::InvalidAuthToken(_) => 401,
            AppError::Forbidden(_) => 403,
            AppError::Overloaded { .. } => 429,
            AppError::Unavailable { .. } => 503,
            AppError::Internal(_) => 500,
        }
    }

    /// For a 429: the name of the limit that refused the call.
    pub fn overloaded_limit(&self) -> Option<&'static str> {
        match self {
            AppError::Overloaded { limit, .. } => Some(limit),
            _ => None,
        }
    }

    /// Seconds for the `Retry-After` header, when the client should retry later.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AppError::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            AppError::Unavailable { .. } => Some(5),
            _ => None,
        }
    }

    pub(crate) fn from_engine(tenant: &str, error: EngineError) -> AppError {
        match error {
            EngineError::Overloaded { .. } => AppError::Overloaded {
                tenant: tenant.to_string(),
                detail: error.to_string(),
                retry_after_secs: 1,
                limit: crate::limits::Limit::AdmissionQueue.name(),
            },
            EngineError::ShutDown | EngineError::Poisoned(_) => AppError::Unavailable {
                tenant: tenant.to_string(),
                detail: error.to_string(),
            },
            other => AppError::Internal(other.to_string()),
        }
    }
}
