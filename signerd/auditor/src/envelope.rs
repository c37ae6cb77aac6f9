//! Reading one audit line: the exact envelope layout and the few body fields that the
//! start-up scan, the verifier and the query tool need.
//!
//! A line is checked twice, cheaply: first its byte layout (`{"v":1,"seq":N,"ts":"...",
//! "type":"...", <body> ,"prev":"<64 hex>"}` with the envelope fields in this order), then a
//! full JSON parse that borrows strings instead of building a tree. This module must never
//! accept a line that is not UTF-8, not one JSON object, has duplicate envelope fields, or
//! whose envelope fields are out of order, and never allocate per line when it can borrow.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::events::{Decision, Kind, Status};
use crate::merkle::Hash;
use crate::record::MAX_LINE_BYTES;

/// Length of a `ts` value: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub const TS_LEN: usize = 27;

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not UTF-8, not JSON, or not the envelope layout: what a torn or overwritten write
    /// leaves behind.
    Syntax(String),
    /// Well-formed, but a field has a wrong value (`v`, a bad timestamp).
    Invalid(String),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Syntax(s) | LineError::Invalid(s) => f.write_str(s),
        }
    }
}

/// A body field the readers look at, as found in the line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Field<'a> {
    /// Not in the record.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A string.
    Str(Cow<'a, str>),
    /// Any other JSON value.
    Other,
}

impl Field<'_> {
    /// The string value, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The fields serde extracts; everything else is skipped without being built.
#[derive(Deserialize)]
struct Fields<'a> {
    v: u64,
    seq: u64,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(default, borrow)]
    req_id: Field<'a>,
    #[serde(default, borrow)]
    decision: Field<'a>,
    #[serde(default, borrow)]
    status: Field<'a>,
    #[serde(default, borrow)]
    client: Field<'a>,
    #[serde(default, borrow)]
    key: Field<'a>,
}

/// One parsed line.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// `seq`.
    pub seq: u64,
    /// `ts`, exactly as written.
    pub ts: &'a str,
    /// `type`, as written.
    pub type_name: &'a str,
    /// `type`, if it is one this version knows.
    pub kind: Option<Kind>,
    /// `prev`, decoded.
    pub prev: Hash,
    /// `req_id`.
    pub req_id: Field<'a>,
    /// `decision` (`sign.decision`).
    pub decision: Field<'a>,
    /// `status` (`sign.result`).
    pub status: Field<'a>,
    /// `client` (`sign.*` records and approval records: the requesting client).
    pub client: Field<'a>,
    /// `key` (`sign.request`).
    pub key: Field<'a>,
}

impl Envelope<'_> {
    /// `decision` (`sign.decision`), if it is a value this version knows.
    pub fn decision(&self) -> Option<Decision> {
        self.decision.as_str().and_then(Decision::parse)
    }

    /// `status` (`sign.result`), if it is a value this version knows.
    pub fn status(&self) -> Option<Status> {
        self.status.as_str().and_then(Status::parse)
    }
}

fn syntax(why: impl Into<String>) -> LineError {
    LineError::Syntax(why.into())
}

/// True if `ts` is a valid UTC time with the exact shape `YYYY-MM-DDTHH:MM:SS.ffffffZ`
/// (microseconds, as the writer makes it).
pub fn valid_ts(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == TS_LEN
        && b.get(19) == Some(&b'.')
        && b.get(20..26)
            .is_some_and(|f| f.iter().all(u8::is_ascii_digit))
        && crate::rfc3339::parse(ts).is_some()
}

/// Parses and checks one line (without its newline).
///
/// [`LineError::Syntax`] means the line is not UTF-8 JSON at all, which is what a write that
/// stopped part-way leaves; a line that is valid JSON but not a valid record is
/// [`LineError::Invalid`] (someone wrote it).
pub fn parse(line: &[u8]) -> Result<Envelope<'_>, LineError> {
    parse_checked(line).map_err(|e| match e {
        LineError::Syntax(why) if serde_json::from_slice::<IgnoredAny>(line).is_ok() => {
            LineError::Invalid(why)
        }
        other => other,
    })
}

fn parse_checked(line: &[u8]) -> Result<Envelope<'_>, LineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(syntax(format!("longer than {MAX_LINE_BYTES} bytes")));
    }
    let text = std::str::from_utf8(line).map_err(|e| syntax(format!("not UTF-8: {e}")))?;
    let rest = text
        .strip_prefix("{\"v\":")
        .ok_or_else(|| syntax("not a record: a record starts with {\"v\":1,\"seq\":"))?;
    let rest = rest.strip_prefix("1,\"seq\":").ok_or_else(|| {
        if rest.starts_with('1') {
            syntax("envelope fields out of order: `seq` must follow `v`")
        } else {
            LineError::Invalid("unsupported record version (`v` must be 1)".to_owned())
        }
    })?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let seq_text = &rest[..digits];
    if digits == 0 || digits > 20 || (digits > 1 && seq_text.starts_with('0')) {
        return Err(syntax("`seq` is not a canonical decimal number"));
    }
    let rest = rest[digits..]
        .strip_prefix(",\"ts\":\"")
        .ok_or_else(|| syntax("envelope fields out of order: `ts` must follow `seq`"))?;
    let ts = rest
        .get(..TS_LEN)
        .filter(|_| rest.as_bytes().get(TS_LEN) == Some(&b'"'))
        .ok_or_else(|| syntax("`ts` is not a timestamp of the form YYYY-MM-DDTHH:MM:SS.ffffffZ"))?;
    let rest = rest[TS_LEN + 1..]
        .strip_prefix(",\"type\":\"")
        .ok_or_else(|| syntax("envelope fields out of order: `type` must follow `ts`"))?;
    let kind_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'_')
        .count();
    if kind_len == 0 || kind_len > 64 || rest.as_bytes().get(kind_len) != Some(&b'"') {
        return Err(syntax("`type` must be 1 to 64 characters of a-z 0-9 . _"));
    }
    let kind = &rest[..kind_len];
    let rest = &rest[kind_len + 1..];
    // `,"prev":"` + 64 hex + `"}` closes every record.
    const SUFFIX: usize = 9 + 64 + 2;
    // The split must fall between characters: a multi-byte character across it is no `prev`.
    if rest.len() < SUFFIX || !rest.ends_with("\"}") || !rest.is_char_boundary(rest.len() - SUFFIX)
    {
        return Err(syntax(
            "the record does not end with ,\"prev\":\"<64 hex>\"}",
        ));
    }
    let (body, suffix) = rest.split_at(rest.len() - SUFFIX);
    let prev_hex = suffix
        .strip_prefix(",\"prev\":\"")
        .and_then(|s| s.get(..64))
        .ok_or_else(|| syntax("`prev` must be the last field"))?;
    if !body.is_empty() && !body.starts_with(',') {
        return Err(syntax("malformed body after `type`"));
    }
    let mut prev = [0u8; 32];
    if !prev_hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        || hex::decode_to_slice(prev_hex, &mut prev).is_err()
    {
        return Err(syntax("`prev` is not 64 lowercase hex digits"));
    }
    // The full parse validates the JSON of the body and refuses a second copy of any envelope
    // field hidden in it (serde reports duplicate fields).
    let fields: Fields<'_> =
        serde_json::from_str(text).map_err(|e| syntax(format!("not valid JSON: {e}")))?;
    if fields.v != 1
        || seq_text.parse::<u64>().ok() != Some(fields.seq)
        || fields.ts != ts
        || fields.kind != kind
        || fields.prev != prev_hex
    {
        return Err(syntax(
            "the envelope fields are not the ones the layout shows",
        ));
    }
    if !valid_ts(ts) {
        return Err(LineError::Invalid(format!(
            "`ts` {ts:?} is not a valid timestamp"
        )));
    }
    Ok(Envelope {
        seq: fields.seq,
        ts,
        type_name: kind,
        kind: Kind::parse(kind),
        prev,
        req_id: fields.req_id,
        decision: fields.decision,
        status: fields.status,
        client: fields.client,
        key: fields.key,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const PREV: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    fn line(body: &str) -> String {
        format!(
            "{{\"v\":1,\"seq\":7,\"ts\":\"2025-01-02T03:04:05.123456Z\",\"type\":\"sign.result\"{body},\"prev\":\"{PREV}\"}}"
        )
    }

    #[test]
    fn parses_envelope_and_fields() {
        let l = line(
            r#","req_id":"r\u0031","status":"signed","signature":{"r":"0x1","v":27},"rules":[1,[2]]"#,
        );
        let e = parse(l.as_bytes()).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.ts, "2025-01-02T03:04:05.123456Z");
        assert_eq!(e.type_name, "sign.result");
        assert_eq!(e.kind, Some(Kind::SignResult));
        assert_eq!(e.prev[31], 0xff);
        assert_eq!(e.req_id.as_str(), Some("r1"));
        assert_eq!(e.status.as_str(), Some("signed"));
        assert_eq!(e.decision, Field::Absent);
        let l2 = line(r#","req_id":null,"key":5"#);
        let e = parse(l2.as_bytes()).unwrap();
        assert_eq!(e.req_id, Field::Null);
        assert_eq!(e.key, Field::Other);
        assert!(parse(line("").as_bytes()).is_ok());
    }

    /// A multi-byte character where the `prev` suffix would start, or inside it, is a syntax
    /// error, not a panic (the split must fall between characters).
    #[test]
    fn multibyte_characters_at_the_suffix_are_refused() {
        for tail in [
            format!("\"m\":\"\u{e9}{}\"}}", "a".repeat(72)),
            format!("\"m\":\"\u{e9}{}\"}}", "a".repeat(73)),
            format!(",\"prev\":\"\u{e9}{}\"}}", "a".repeat(62)),
            format!(",\"prev\":\"{}\u{e9}\"}}", "a".repeat(63)),
        ] {
            let l = format!(
                "{{\"v\":1,\"seq\":0,\"ts\":\"2025-01-02T03:04:05.123456Z\",\"type\":\"x\",{tail}"
            );
            let err = parse(l.as_bytes()).err();
            assert!(err.is_some(), "{l:?} parsed");
        }
    }

    #[test]
    fn refuses_bad_layouts() {
        let good = line(r#","req_id":"a""#);
        let cases: Vec<(String, &str)> = vec![
            (good[..good.len() - 1].to_owned(), "does not end"),
            (
                good.replace("{\"v\":1,\"seq\":7,", "{\"seq\":7,\"v\":1,"),
                "starts with",
            ),
            (good.replace("\"v\":1,", "\"v\":2,"), "unsupported"),
            (good.replace("\"seq\":7", "\"seq\":07"), "canonical"),
            (good.replace("\"seq\":7", "\"seq\":-7"), "canonical"),
            (good.replace(".123456Z", ".123Z"), "timestamp"),
            (good.replace("T03", "T25"), "not a valid timestamp"),
            (good.replace("sign.result", "Sign"), "type"),
            (
                good.replace(",\"req_id\":\"a\"", "\"req_id\":\"a\""),
                "malformed body",
            ),
            (
                good.replace(",\"req_id\":\"a\"", ",\"req_id\":\"a\",\"seq\":8"),
                "duplicate field",
            ),
            (
                good.replace(",\"req_id\":\"a\"", ",\"req_id\":\"a\",\"prev\":\"x\""),
                "duplicate field",
            ),
            (
                good.replace(",\"req_id\":\"a\"", ",\"req_id\":a"),
                "not valid JSON",
            ),
            (good.replace("00ff", "00FF"), "lowercase hex"),
            (good.replace(",\"prev\"", ",\"prex\""), "last field"),
            (format!("{good} "), "does not end"),
            ("\u{0}\u{0}\u{0}".to_owned(), "not a record"),
        ];
        for (l, want) in cases {
            let e = parse(l.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{l}: {e}");
        }
        assert!(matches!(
            parse(&[b'{', 0xff, b'}']),
            Err(LineError::Syntax(m)) if m.contains("UTF-8")
        ));
    }
}
