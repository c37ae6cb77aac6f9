//! Durations (`"24h"`), times of day (`"09:00"`), fixed UTC offsets (`"+01:00"`) and weekdays,
//! computed on Unix seconds, and RFC 3339 timestamps, read with the `time` crate.
//!
//! This module never reads the clock: every function takes the time it is asked about. Time
//! zones are fixed UTC offsets in this version; there is no time-zone database, so a window
//! written for `+01:00` does not follow daylight-saving changes.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Longest duration accepted anywhere (windows, approval TTLs): a leap year.
pub(crate) const MAX_DURATION_SECS: u64 = 366 * 86_400;

/// A duration written `<n>s`, `<n>m`, `<n>h` or `<n>d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Duration(pub(crate) u64);

impl Duration {
    /// Parses `"30m"`, `"24h"`, `"7d"`.
    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "`{s}` is not a duration: write a whole number and s, m, h or d (\"30m\", \"24h\", \"7d\")"
            )
        };
        let unit = s.chars().last().ok_or_else(bad)?;
        let mult: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let digits = &s[..s.len() - 1];
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let secs = n.saturating_mul(mult);
        if secs == 0 {
            return Err(format!("`{s}` is zero; a duration must be positive"));
        }
        if secs > MAX_DURATION_SECS {
            return Err(format!("`{s}` is longer than the maximum of 366d"));
        }
        Ok(Duration(secs))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for Duration {
    /// In the largest whole unit, keeping hours up to two days: `30m`, `24h`, `7d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.is_multiple_of(86_400) && s > 2 * 86_400 {
            write!(f, "{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

/// Minutes after local midnight, `0..=1440` (1440 is `24:00`, the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimeOfDay(pub(crate) u16);

impl TimeOfDay {
    fn parse(s: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("`{s}` is not a time of day: write HH:MM, 00:00 to 24:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if m > 59 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TimeOfDay::parse(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// A fixed offset from UTC, in seconds east.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct UtcOffset(pub(crate) i32);

impl UtcOffset {
    /// Parses `Z`, `+HH:MM` or `-HH:MM` (at most 18 hours either way).
    pub(crate) fn parse(s: &str) -> Result<UtcOffset, String> {
        if s == "Z" {
            return Ok(UtcOffset(0));
        }
        let bad = || format!("`{s}` is not a UTC offset: write +HH:MM or -HH:MM (e.g. \"+01:00\")");
        let sign = match s.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        let t = TimeOfDay::parse(&s[1..]).map_err(|_| bad())?;
        if t.0 > 18 * 60 {
            return Err(format!("`{s}` is more than 18 hours from UTC"));
        }
        Ok(UtcOffset(sign * i32::from(t.0) * 60))
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UtcOffset::parse(&s).map_err(de::Error::custom)
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let m = self.0.unsigned_abs() / 60;
        write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
    }
}

/// Day names as written in policies, Monday first.
pub(crate) const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekday, 0 = Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Weekday(pub(crate) u8);

impl<'de> Deserialize<'de> for Weekday {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DAYS.iter()
            .position(|d| *d == s)
            .and_then(|i| u8::try_from(i).ok())
            .map(Weekday)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "`{s}` is not a day: write mon, tue, wed, thu, fri, sat or sun"
                ))
            })
    }
}

/// A daily time window in a fixed UTC offset, on some weekdays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hours {
    pub(crate) from: TimeOfDay,
    pub(crate) to: TimeOfDay,
    pub(crate) offset: UtcOffset,
    /// Bit `d` set: the window opens on weekday `d` (0 = Monday).
    pub(crate) days: u8,
}

impl Hours {
    /// Whether `now_unix` falls in the window. A window with `from > to` crosses midnight and
    /// belongs to the day it opens on: `fri 22:00-06:00` includes Saturday 02:00.
    pub(crate) fn contains(&self, now_unix: i64) -> bool {
        let local = now_unix.saturating_add(i64::from(self.offset.0));
        let day = local.div_euclid(86_400);
        let minute = local.rem_euclid(86_400) / 60;
        let from = i64::from(self.from.0);
        let to = i64::from(self.to.0);
        let open_on = |day: i64| self.days & (1 << weekday(day)) != 0;
        if from < to {
            minute >= from && minute < to && open_on(day)
        } else {
            (minute >= from && open_on(day)) || (minute < to && open_on(day - 1))
        }
    }

    /// Local time and weekday of `now_unix` in this window's offset, for explanations.
    pub(crate) fn local(&self, now_unix: i64) -> String {
        let local = now_unix.saturating_add(i64::from(self.offset.0));
        let day = local.div_euclid(86_400);
        let minute = local.rem_euclid(86_400) / 60;
        let name = DAYS.get(usize::from(weekday(day))).copied().unwrap_or("?");
        format!(
            "{name} {:02}:{:02} ({})",
            minute / 60,
            minute % 60,
            self.offset
        )
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{} ({})", self.from, self.to, self.offset)?;
        if self.days != 0x7f {
            let names: Vec<&str> = (0..7u8)
                .filter(|d| self.days & (1 << d) != 0)
                .filter_map(|d| DAYS.get(usize::from(d)).copied())
                .collect();
            write!(f, " on {}", names.join(","))?;
        }
        Ok(())
    }
}

/// Weekday (0 = Monday) of `days` since 1970-01-01, which was a Thursday.
pub(crate) fn weekday(days: i64) -> u8 {
    u8::try_from((days + 3).rem_euclid(7)).unwrap_or(0)
}

/// Formats Unix seconds as an RFC 3339 UTC time, `2026-01-01T10:00:00Z` (proleptic Gregorian
/// calendar, days from the epoch to a civil date).
pub(crate) fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01, in 400-year eras starting on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Parses an RFC 3339 timestamp (`2026-01-01T10:00:00Z`, `2026-01-01T11:00:00+01:00`,
/// optional fractional seconds, which are dropped) into Unix seconds, with the `time` crate.
/// (Not `humantime`, which signerd uses for audit times: it refuses UTC offsets and the space
/// separator that policy files may use.) A leap second is read as the last second of its
/// minute, and is accepted only where one can occur: at the end of a month, in UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not an RFC 3339 time such as \"2026-01-01T10:00:00Z\"");
    // `time` takes any character between date and time; RFC 3339 has `T`, `t`, and (section
    // 5.6) a space.
    if !s.as_bytes().get(10).is_some_and(|c| b"Tt ".contains(c)) {
        return Err(bad());
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(time::OffsetDateTime::unix_timestamp)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("24h").unwrap().0, 86_400);
        assert_eq!(Duration::parse("30m").unwrap().0, 1800);
        assert_eq!(Duration::parse("7d").unwrap().0, 604_800);
        assert_eq!(Duration::parse("90s").unwrap().0, 90);
        for bad in [
            "",
            "h",
            "0h",
            "1.5h",
            "-1h",
            "1w",
            "367d",
            "99999999999999d",
            "1 h",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Duration(86_400).to_string(), "24h");
        assert_eq!(Duration(7 * 86_400).to_string(), "7d");
        assert_eq!(Duration(5400).to_string(), "90m");
    }

    #[test]
    fn offsets_and_times() {
        assert_eq!(UtcOffset::parse("+01:00").unwrap().0, 3600);
        assert_eq!(UtcOffset::parse("-05:30").unwrap().0, -19_800);
        assert_eq!(UtcOffset::parse("Z").unwrap().0, 0);
        assert!(UtcOffset::parse("01:00").is_err());
        assert!(UtcOffset::parse("+19:00").is_err());
        assert_eq!(UtcOffset(-19_800).to_string(), "-05:30");
        assert_eq!(TimeOfDay::parse("24:00").unwrap().0, 1440);
        assert!(TimeOfDay::parse("24:01").is_err());
        assert!(TimeOfDay::parse("9:00").is_err());
    }

    #[test]
    fn formats_rfc3339() {
        for t in [
            0,
            951_782_400,
            1_709_164_800,
            1_767_261_600,
            4_107_542_399,
            -86_400,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t, "{t}");
        }
        assert_eq!(format_rfc3339(1_767_261_600), "2026-01-01T10:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339("2026-01-01T10:00:00Z").unwrap(),
            1_767_261_600
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T11:00:00+01:00").unwrap(),
            1_767_261_600
        );
        assert_eq!(
            parse_rfc3339("2026-01-01T10:00:00.123Z").unwrap(),
            1_767_261_600
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").unwrap(),
            1_709_164_800
        );
        for bad in [
            "2026-01-01",
            "2026-01-01T10:00:00",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T10:00:00+1:00",
            "2026-01-01T10:00:00.Z",
            "２026-01-01T10:00:00Z",
            "2026-01-01X10:00:00Z",
            "2026-01-01T10:00:60Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T10:00:00+24:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_rfc3339("2026-01-01 11:00:00+01:00").unwrap(),
            1_767_261_600
        );
        assert_eq!(
            parse_rfc3339("2026-01-01t10:00:00z").unwrap(),
            1_767_261_600
        );
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z").unwrap(),
            parse_rfc3339("2016-12-31T23:59:59Z").unwrap()
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.5Z").unwrap(), -1);
        // 2026-01-01 is a Thursday.
        assert_eq!(weekday(1_767_225_600 / 86_400), 3);
    }

    #[test]
    fn windows_cross_midnight_and_belong_to_their_opening_day() {
        // Friday 22:00 to 06:00 in +02:00.
        let h = Hours {
            from: TimeOfDay(22 * 60),
            to: TimeOfDay(6 * 60),
            offset: UtcOffset(7200),
            days: 1 << 4,
        };
        let at = |s: &str| parse_rfc3339(s).unwrap();
        assert!(h.contains(at("2026-01-02T23:30:00+02:00"))); // Fri 23:30
        assert!(h.contains(at("2026-01-03T02:00:00+02:00"))); // Sat 02:00, opened Friday
        assert!(!h.contains(at("2026-01-03T06:00:00+02:00"))); // Sat 06:00: closed
        assert!(!h.contains(at("2026-01-03T23:00:00+02:00"))); // Sat 23:00: Saturday not listed
        assert!(!h.contains(at("2026-01-02T02:00:00+02:00"))); // Fri 02:00 opened Thursday
        // The same instant in UTC is Friday 21:30, outside; the offset matters.
        assert!(h.contains(at("2026-01-02T21:30:00Z")));
        assert_eq!(
            h.local(at("2026-01-03T02:00:00+02:00")),
            "sat 02:00 (+02:00)"
        );
    }
}
