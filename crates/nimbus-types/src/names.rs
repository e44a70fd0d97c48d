//! Identifier rules for tables, indexes and function exports (compat spec §1.2).

use crate::error::TypesError;

/// Longest table, index or export name.
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// Checks `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters, not only underscores.
pub fn check_identifier(kind: &'static str, name: &str) -> Result<(), TypesError> {
    let fail = |reason| {
        Err(TypesError::InvalidIdentifier {
            kind,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return fail("must be at most 64 characters");
    }
    let mut chars = name.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
    {
        return fail("must start with a letter or '_'");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return fail("may contain only letters, digits and '_'");
    }
    if name.chars().all(|c| c == '_') {
        return fail("must not be made only of underscores");
    }
    Ok(())
}

/// Checks a user table name: an identifier that does not start with `_`.
pub fn check_user_table_name(name: &str) -> Result<(), TypesError> {
    check_identifier("table", name)?;
    if name.starts_with('_') {
        return Err(TypesError::InvalidIdentifier {
            kind: "table",
            name: name.to_string(),
            reason: "names starting with '_' are reserved for system tables",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(check_user_table_name("orders").is_ok());
        assert!(check_user_table_name("_orders").is_err());
        assert!(check_identifier("index", "by_shop_status").is_ok());
        assert!(check_identifier("index", "1abc").is_err());
        assert!(check_identifier("index", "__").is_err());
        assert!(check_identifier("index", "a-b").is_err());
    }
}
