//! The one error type of this crate.

/// Everything that can be wrong with a value, an ID, a validator or a query expression.
///
/// Each variant is a user-facing problem (bad input), never an internal failure; callers
/// report them as "invalid value" / "invalid argument" errors with the message as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TypesError {
    /// A JSON value that is not valid convex-JSON.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A value nested deeper than [`crate::value::MAX_VALUE_DEPTH`].
    #[error("value is nested more than {max} levels deep")]
    TooDeep { max: usize },
    /// A value or document larger than its limit.
    #[error("{what} is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// A field name that breaks the field-name rule.
    #[error("invalid field name {name:?}: {reason}")]
    InvalidFieldName { name: String, reason: &'static str },
    /// A table or index name that is not an identifier.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidIdentifier {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    /// A string that is not a document ID of this tenant.
    #[error("invalid ID {0:?}")]
    InvalidId(String),
    /// A validator JSON or schema JSON that cannot be parsed.
    #[error("invalid validator: {0}")]
    InvalidValidator(String),
    /// A value rejected by a validator; the message says where and why.
    #[error("{0}")]
    ValidationFailed(String),
    /// A query expression that cannot be parsed or evaluated.
    #[error("{0}")]
    InvalidQuery(String),
}
