//! Duration settings. Each is written with its unit (`request_timeout = "5s"`, `"250ms"`, `"1m"`;
//! the syntax of the `humantime` crate, read through `humantime-serde`), and each still reads the
//! integer spelling of earlier releases (`request_timeout_ms = 5000`) as a deprecated alias, so
//! that existing configuration files keep working.
//!
//! A setting is never read from both spellings: a table that names both is refused, and the
//! message names both keys. Range errors name the key as it was written, in its own unit.

use std::time::Duration;

/// The unit of a deprecated integer alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegacyUnit {
    /// `*_ms`.
    Millis,
    /// `*_micros`.
    Micros,
}

impl LegacyUnit {
    fn duration(self, n: u64) -> Duration {
        match self {
            LegacyUnit::Millis => Duration::from_millis(n),
            LegacyUnit::Micros => Duration::from_micros(n),
        }
    }

    fn count(self, d: Duration) -> u128 {
        match self {
            LegacyUnit::Millis => d.as_millis(),
            LegacyUnit::Micros => d.as_micros(),
        }
    }
}

/// One duration setting of the configuration file: where it is, its deprecated integer alias,
/// its default and its range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DurationSetting {
    /// The table's path, such as `server` or `keys.vault`.
    pub(crate) table: &'static str,
    /// The key, such as `request_timeout`.
    pub(crate) key: &'static str,
    /// The deprecated integer key, such as `request_timeout_ms`.
    pub(crate) legacy_key: &'static str,
    /// The unit of `legacy_key`.
    pub(crate) legacy_unit: LegacyUnit,
    /// The value when neither key is set.
    pub(crate) default: Duration,
    /// The smallest value allowed.
    pub(crate) min: Duration,
    /// The largest value allowed.
    pub(crate) max: Duration,
}

impl DurationSetting {
    /// The value in effect: the key's, else the alias's, else the default. Call it on a
    /// configuration that [`DurationSetting::check`] accepted.
    pub(crate) fn value(&self, value: Option<Duration>, legacy: Option<u64>) -> Duration {
        value
            .or_else(|| legacy.map(|n| self.legacy_unit.duration(n)))
            .unwrap_or(self.default)
    }

    /// Refuses a table that sets both spellings, and a value outside the range.
    pub(crate) fn check(&self, value: Option<Duration>, legacy: Option<u64>) -> Result<(), String> {
        let DurationSetting {
            table,
            key,
            legacy_key,
            legacy_unit,
            min,
            max,
            ..
        } = *self;
        match (value, legacy) {
            (Some(_), Some(_)) => Err(format!(
                "{table}: both `{key}` and `{legacy_key}` are set; `{legacy_key}` is the deprecated \
                 spelling of `{key}`: keep only `{key}`"
            )),
            (Some(d), None) if !(min..=max).contains(&d) => Err(format!(
                "{table}.{key} = \"{}\" is outside \"{}\"..=\"{}\"",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max),
            )),
            (None, Some(n)) if !(min..=max).contains(&legacy_unit.duration(n)) => Err(format!(
                "{table}.{legacy_key} = {n} is outside {}..={}",
                legacy_unit.count(min),
                legacy_unit.count(max),
            )),
            _ => Ok(()),
        }
    }

    /// A warning for a table that uses the deprecated spelling.
    pub(crate) fn deprecation(&self, legacy: Option<u64>) -> Option<String> {
        let n = legacy?;
        Some(format!(
            "{}.{} is deprecated: write {} = \"{}\"",
            self.table,
            self.legacy_key,
            self.key,
            humantime::format_duration(self.legacy_unit.duration(n))
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SETTING: DurationSetting = DurationSetting {
        table: "server",
        key: "request_timeout",
        legacy_key: "request_timeout_ms",
        legacy_unit: LegacyUnit::Millis,
        default: Duration::from_secs(10),
        min: Duration::from_millis(100),
        max: Duration::from_secs(600),
    };

    #[test]
    fn key_alias_default() {
        let ms = Duration::from_millis;
        assert_eq!(SETTING.value(None, None), ms(10_000));
        assert_eq!(SETTING.value(Some(ms(250)), None), ms(250));
        assert_eq!(SETTING.value(None, Some(250)), ms(250));
        let micros = DurationSetting {
            legacy_unit: LegacyUnit::Micros,
            ..SETTING
        };
        assert_eq!(micros.value(None, Some(250)), Duration::from_micros(250));
        assert_eq!(SETTING.check(None, None), Ok(()));
        assert_eq!(SETTING.check(Some(ms(100)), None), Ok(()));
        assert_eq!(SETTING.check(None, Some(600_000)), Ok(()));
        assert_eq!(SETTING.deprecation(None), None);
        assert_eq!(
            SETTING.deprecation(Some(1500)).as_deref(),
            Some("server.request_timeout_ms is deprecated: write request_timeout = \"1s 500ms\"")
        );
    }

    #[test]
    fn errors_name_the_keys() {
        let ms = Duration::from_millis;
        assert_eq!(
            SETTING.check(Some(ms(5)), Some(5)).unwrap_err(),
            "server: both `request_timeout` and `request_timeout_ms` are set; \
             `request_timeout_ms` is the deprecated spelling of `request_timeout`: keep only \
             `request_timeout`"
        );
        assert_eq!(
            SETTING.check(Some(ms(99)), None).unwrap_err(),
            "server.request_timeout = \"99ms\" is outside \"100ms\"..=\"10m\""
        );
        assert_eq!(
            SETTING.check(None, Some(600_001)).unwrap_err(),
            "server.request_timeout_ms = 600001 is outside 100..=600000"
        );
        // Not even u64::MAX milliseconds overflows.
        assert!(SETTING.check(None, Some(u64::MAX)).is_err());
    }
}
