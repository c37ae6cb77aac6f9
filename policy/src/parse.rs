//! Parsing and validation of policy files (TOML, strict schema).
//!
//! Unknown fields, empty lists, duplicate rule ids and oversized files are errors that name
//! the file, line and column, so a policy that does not say exactly what its author meant is
//! never loaded.

use std::collections::HashSet;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::Kind;

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// The only policy language version this crate understands.
const VERSION: u32 = 1;

/// Why a policy file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but says something inconsistent.
    #[error("{file}: {message}")]
    Invalid {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("{file}: policy is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The file name given to [`Policy::parse`].
        file: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Allows the request unless a deny rule also matches.
    Allow,
    /// Denies the request, whatever else matches.
    Deny,
}

/// One rule. Every matcher that is present must hold; an absent matcher matches anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id, reported in decisions and audit records.
    pub id: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Client ids this rule applies to.
    pub clients: Option<Vec<String>>,
    /// Client roles this rule applies to (any one suffices).
    pub roles: Option<Vec<String>>,
    /// Key ids this rule applies to.
    pub keys: Option<Vec<String>>,
    /// Request kinds; when absent, every kind except `raw_digest`.
    pub kinds: Option<Vec<Kind>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    serial: u64,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

/// A validated policy, with the hash of the exact bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct Policy {
    serial: u64,
    rules: Vec<Rule>,
    hash: [u8; 32],
}

impl Policy {
    /// Parses and validates `src`; `file` names it in error messages.
    pub fn parse(file: &str, src: &str) -> Result<Policy, PolicyError> {
        if src.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file: file.to_owned(),
                size: src.len(),
                max: MAX_POLICY_BYTES,
            });
        }
        let parsed: File = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(src, s.start));
            PolicyError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let invalid = |message: String| PolicyError::Invalid {
            file: file.to_owned(),
            message,
        };
        if parsed.version != VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this signerd reads version {VERSION})",
                parsed.version
            )));
        }
        let mut ids = HashSet::new();
        for rule in &parsed.rules {
            if rule.id.is_empty() {
                return Err(invalid("a rule has an empty `id`".into()));
            }
            if !ids.insert(rule.id.as_str()) {
                return Err(invalid(format!("rule id `{}` is used twice", rule.id)));
            }
            let lists = [
                ("clients", rule.clients.as_ref().map(Vec::len)),
                ("roles", rule.roles.as_ref().map(Vec::len)),
                ("keys", rule.keys.as_ref().map(Vec::len)),
                ("kinds", rule.kinds.as_ref().map(Vec::len)),
            ];
            for (name, len) in lists {
                if len == Some(0) {
                    // An empty list would match nothing; say so instead of silently never matching.
                    return Err(invalid(format!(
                        "rule `{}`: `{name}` is empty; omit it to match any",
                        rule.id
                    )));
                }
            }
        }
        Ok(Policy {
            serial: parsed.serial,
            rules: parsed.rules,
            hash: Sha256::digest(src.as_bytes()).into(),
        })
    }

    /// The policy's serial number.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// SHA-256 of the policy file's bytes.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// [`Policy::hash`] as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `src`.
fn line_col(src: &str, at: usize) -> (usize, usize) {
    let at = at.min(src.len());
    let before = src.get(..at).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        match Policy::parse("p.toml", src) {
            Ok(_) => panic!("expected an error for:\n{src}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_field_is_located() {
        let e =
            err("version = 1\nserial = 1\n[[rule]]\nid = \"a\"\neffect = \"allow\"\n  valu = 3\n");
        assert!(e.starts_with("p.toml:6:3: "), "{e}");
        assert!(e.contains("unknown field `valu`"), "{e}");
    }

    #[test]
    fn unknown_kind_is_located() {
        let e = err(
            "version = 1\nserial = 1\n[[rule]]\nid = \"a\"\neffect = \"allow\"\nkinds = [\"teleport\"]\n",
        );
        assert!(e.starts_with("p.toml:6:"), "{e}");
        assert!(e.contains("teleport"), "{e}");
    }

    #[test]
    fn duplicate_ids_empty_lists_and_versions_are_refused() {
        let dup = "version = 1\nserial = 1\n[[rule]]\nid = \"a\"\neffect = \"allow\"\n[[rule]]\nid = \"a\"\neffect = \"deny\"\n";
        assert_eq!(err(dup), "p.toml: rule id `a` is used twice");
        let empty =
            "version = 1\nserial = 1\n[[rule]]\nid = \"a\"\neffect = \"allow\"\nkeys = []\n";
        assert_eq!(
            err(empty),
            "p.toml: rule `a`: `keys` is empty; omit it to match any"
        );
        assert!(err("version = 2\nserial = 1\n").contains("version 2 is not supported"));
        assert!(err("serial = 1\n").contains("missing field `version`"));
    }

    #[test]
    fn oversized_file_is_refused() {
        let big = format!(
            "version = 1\nserial = 1\n#{}\n",
            "x".repeat(MAX_POLICY_BYTES)
        );
        assert!(err(&big).contains("more than the"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}
