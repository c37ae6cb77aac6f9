//! The identifiers that enter signerd from outside, each checked once where it enters:
//! a [`KeyId`] (a request's `key_id`, a key file's name, a transit key's name), a
//! [`RequestId`] (a client's idempotency key) and a [`ClientId`] (an identity's id). Past that
//! point a value of these types is known to be well-formed, so it may name a file, become part
//! of a store key, or be written to the audit log.

use std::fmt;
use std::ops::Deref;

/// Longest key id, in characters.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Longest request id, in bytes (ASCII).
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Why an identifier is not well-formed: a sentence that names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<$name, IdError> {
                $name::parse(s)
            }
        }
    };
}

id_type!(
    /// A key's id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, not starting with `.` (so
    /// that it can never be a hidden file, `.` or `..`, or contain a path separator). Every
    /// backend's key ids follow these rules.
    KeyId
);

id_type!(
    /// A client-chosen idempotency key: 1 to 128 characters from `A-Z a-z 0-9 . _ : -`.
    RequestId
);

id_type!(
    /// An identity's id, as policy rules name it: 1 to 128 bytes, no control characters.
    ClientId
);

impl KeyId {
    /// Checks `id` against the rules of [`KeyId`].
    pub fn parse(id: &str) -> Result<KeyId, IdError> {
        if id.is_empty() {
            return Err(IdError("invalid key id: it is empty".to_owned()));
        }
        let len = id.chars().count();
        if len > MAX_KEY_ID_LEN {
            let prefix: String = id.chars().take(16).collect();
            return Err(IdError(format!(
                "invalid key id {prefix:?}…: it is {len} characters long; the maximum is {MAX_KEY_ID_LEN}"
            )));
        }
        if let Some((pos, c)) = id
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError(format!(
                "invalid key id {id:?}: character {c:?} at position {} is not allowed \
                 (allowed: A-Z a-z 0-9 . _ -)",
                pos + 1
            )));
        }
        if id.starts_with('.') {
            return Err(IdError(format!(
                "invalid key id {id:?}: it must not start with '.'"
            )));
        }
        Ok(KeyId(id.to_owned()))
    }
}

impl RequestId {
    /// Checks `id` against the rules of [`RequestId`]. The error never repeats the id (it is
    /// client text that failed the rules).
    pub fn parse(id: &str) -> Result<RequestId, IdError> {
        if id.is_empty() {
            return Err(IdError(
                "request_id: required (a client-chosen idempotency key)".into(),
            ));
        }
        if id.len() > MAX_REQUEST_ID_LEN {
            return Err(IdError(format!(
                "request_id: at most {MAX_REQUEST_ID_LEN} characters, got {}",
                id.len()
            )));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(IdError(format!(
                "request_id: character {c:?} is not allowed (use A-Z a-z 0-9 . _ : -)"
            )));
        }
        Ok(RequestId(id.to_owned()))
    }
}

impl ClientId {
    /// Checks `id` against the rules of [`ClientId`].
    pub fn parse(id: &str) -> Result<ClientId, IdError> {
        if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN || id.chars().any(char::is_control) {
            return Err(IdError(format!(
                "client id: 1 to {MAX_CLIENT_ID_LEN} characters, no control characters"
            )));
        }
        Ok(ClientId(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_ids_follow_the_file_name_rules() {
        for good in ["hot", "a.b_c-D9", &"k".repeat(64)] {
            assert_eq!(
                KeyId::parse(good).map(|k| k.into_string()),
                Ok(good.to_owned())
            );
        }
        for (bad, why) in [
            ("", "it is empty"),
            (".hidden", "must not start with '.'"),
            ("..", "must not start with '.'"),
            ("a/b", "character '/' at position 2"),
            ("ключ", "character 'к' at position 1"),
            (&"k".repeat(65), "65 characters long; the maximum is 64"),
        ] {
            let e = KeyId::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn request_ids_are_checked_without_repeating_them() {
        assert!(RequestId::parse("order-42:retry.1_a").is_ok());
        for bad in ["", "a b", "a\nb", "<script>", &"r".repeat(129)] {
            let e = RequestId::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("request_id: "), "{e}");
            if bad.len() > 3 {
                assert!(!e.contains(bad), "{e}");
            }
        }
        assert!(RequestId::parse(&"r".repeat(128)).is_ok());
    }

    #[test]
    fn client_ids_have_no_control_characters() {
        assert!(ClientId::parse("payouts-worker").is_ok());
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse("a\u{7}b").is_err());
        assert!(ClientId::parse(&"c".repeat(129)).is_err());
    }
}
