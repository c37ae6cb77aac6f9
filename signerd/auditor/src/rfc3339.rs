//! The one place signerd and its auditor read RFC 3339 times (audit records' `ts`, filters
//! given by people), through `humantime`. It must never accept a time it cannot place exactly
//! in UTC.

use std::time::SystemTime;

/// A UTC time such as `2026-01-01T10:00:00Z` or `2026-01-01T10:00:00.123456Z` (a leap second
/// is read as the last second of its minute); `None` for anything else, before 1970 included.
pub fn parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// [`parse`], also taking a space for the `T` and no `Z` (read as UTC), for times typed by
/// people.
pub fn parse_lenient(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339_weak(s)
}

/// Seconds since 1970 of [`parse`]'s time.
pub fn parse_unix(s: &str) -> Option<i64> {
    let since = parse(s)?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
}
