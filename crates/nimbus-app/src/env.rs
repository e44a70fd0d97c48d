//! Environment variables of a tenant: what its functions read as `process.env`, set with
//! `npx convex env set|remove` (`POST /api/update_environment_variables`) and read back
//! through the CLI's system queries (`system.rs`).
//!
//! They live in the tenant's deployment (`deployment.rs`), so they are stored in its own
//! namespace and published with a snapshot like code. A change commits a new deployment of
//! the same code with a fresh code identity: runtimes bake `process.env` in when they load
//! code, and cached query results may depend on it, so nothing made under the old values
//! is used after the change. Calls that start after the change see the new values; a call
//! already running keeps the values it started with. Pushes keep the variables in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::AppError;
use crate::tenant::Tenant;

/// Most variables one tenant may have.
pub const MAX_VARIABLES: usize = 512;
/// Longest name, in bytes (names are ASCII).
pub const MAX_NAME_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 8 << 10;
/// Largest total of names and values, in bytes.
pub const MAX_TOTAL_BYTES: usize = 512 << 10;
/// Most changes one request may make.
pub const MAX_CHANGES: usize = MAX_VARIABLES * 2;

/// One change: set `name` to `value`, or remove it (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvChange {
    pub name: String,
    pub value: Option<String>,
}

fn invalid(message: String) -> AppError {
    AppError::InvalidEnvironmentVariable(message)
}

/// A name starts with a letter and holds only ASCII letters, digits and underscores.
pub fn check_name(name: &str) -> Result<(), AppError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "environment variable names are 1 to {MAX_NAME_BYTES} characters long, got {}",
            name.len()
        )));
    }
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_with_letter || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(format!(
            "invalid environment variable name {:?}: a name starts with a letter and holds \
             only letters, digits and underscores",
            truncated(name)
        )));
    }
    Ok(())
}

fn truncated(text: &str) -> String {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

/// `current` with `changes` applied in order, checked against every limit.
pub fn apply_changes(
    current: &BTreeMap<String, String>,
    changes: &[EnvChange],
) -> Result<BTreeMap<String, String>, AppError> {
    if changes.len() > MAX_CHANGES {
        return Err(invalid(format!(
            "{} changes in one request; at most {MAX_CHANGES} are allowed",
            changes.len()
        )));
    }
    let mut env = current.clone();
    for change in changes {
        check_name(&change.name)?;
        match &change.value {
            Some(value) => {
                if value.len() > MAX_VALUE_BYTES {
                    return Err(invalid(format!(
                        "the value of {} is {} bytes; values are at most {MAX_VALUE_BYTES} bytes",
                        change.name,
                        value.len()
                    )));
                }
                env.insert(change.name.clone(), value.clone());
            }
            None => {
                env.remove(&change.name);
            }
        }
    }
    if env.len() > MAX_VARIABLES {
        return Err(invalid(format!(
            "{} environment variables; a tenant may have at most {MAX_VARIABLES}",
            env.len()
        )));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(format!(
            "the environment variables would total {total} bytes (names and values); \
             the limit is {MAX_TOTAL_BYTES}"
        )));
    }
    Ok(env)
}

impl Tenant {
    /// Applies `changes` atomically (all or none) and makes them durable before returning;
    /// calls that start afterwards see them. Serialized with pushes.
    pub async fn update_environment_variables(
        &self,
        changes: &[EnvChange],
    ) -> Result<(), AppError> {
        let _one_at_a_time = self.activation_lock.lock().await;
        let current = self.deployment();
        let env = apply_changes(&current.env, changes)?;
        if env == *current.env {
            return Ok(());
        }
        let next = Arc::new(current.with_env(env));
        self.commit_deployment(next.clone()).await?;
        tracing::info!(
            tenant = self.name(),
            code_id = %next.code_id,
            variables = next.env.len(),
            "environment variables changed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> EnvChange {
        EnvChange {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    #[test]
    fn names_follow_convex_rules() {
        for ok in ["A", "api_KEY_2", "x".repeat(MAX_NAME_BYTES).as_str()] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1ABC",
            "_A",
            "A-B",
            "A B",
            "É",
            "x".repeat(MAX_NAME_BYTES + 1).as_str(),
        ] {
            assert!(
                matches!(
                    check_name(bad),
                    Err(AppError::InvalidEnvironmentVariable(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn changes_apply_in_order_and_respect_limits() {
        let env = apply_changes(
            &BTreeMap::new(),
            &[
                set("A", "1"),
                set("B", "2"),
                EnvChange {
                    name: "A".into(),
                    value: None,
                },
                set("B", "3"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(env, BTreeMap::from([("B".to_string(), "3".to_string())]));

        let big = "v".repeat(MAX_VALUE_BYTES + 1);
        assert!(apply_changes(&env, &[set("C", &big)]).is_err());
        let many: Vec<EnvChange> = (0..=MAX_VARIABLES)
            .map(|i| set(&format!("V{i}"), "x"))
            .collect();
        assert!(apply_changes(&BTreeMap::new(), &many).is_err());
        let heavy: Vec<EnvChange> = (0..70)
            .map(|i| set(&format!("V{i}"), &"x".repeat(MAX_VALUE_BYTES)))
            .collect();
        assert!(apply_changes(&BTreeMap::new(), &heavy).is_err());
        // A refused request changes nothing.
        assert_eq!(
            apply_changes(&env, &[set("OK", "1"), set("bad-name", "2")]).ok(),
            None
        );
    }
}
