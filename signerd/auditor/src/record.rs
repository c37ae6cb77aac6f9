//! Audit record bodies and their exact byte encoding.
//!
//! A record's body fields are serialized here, on the caller's thread, so the single writer
//! thread only adds the envelope (`v`, `seq`, `ts`, `type`, `prev`) and hashes. Field order is
//! the insertion order, because the bytes on disk are the bytes hashed and auditors read them
//! with `jq`. This module must never reorder fields, emit a line break inside a record, let a
//! body field shadow an envelope field, or accept a record that would be too long to read back.

use crate::events::Event;

/// Why a record cannot be written: a bug in the code that built it, never a problem of the
/// log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A reserved or duplicate field name, a bad type name, or a record too long to read
    /// back.
    #[error("invalid audit record: {0}")]
    Invalid(String),
}

/// Longest record line, in bytes without the trailing newline. The reader refuses longer
/// lines, so the writer must never produce one.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Longest record type name, in bytes.
const MAX_KIND_BYTES: usize = 64;

/// Room the envelope needs around the body: `{"v":1,"seq":` + 20 digits + `,"ts":"` + a
/// timestamp (27 bytes until year 9999) + `","type":"` + the type + `"` + `,"prev":"` +
/// 64 hex digits + `"}`; rounded up generously.
const ENVELOPE_BYTES: usize = 256 + MAX_KIND_BYTES;

/// Field names the envelope owns; a body field with one of these names would make the line
/// ambiguous (JSON readers disagree on duplicate keys).
const RESERVED: [&str; 5] = ["v", "seq", "ts", "type", "prev"];

/// A record body: the type and the fields after the envelope, in insertion order.
///
/// Built field by field ([`Record::new`], [`Record::field`]) or from a typed event
/// ([`Record::from_event`]); either way each field is serialized when it is added, so that
/// the writer thread only has to copy the bytes.
#[derive(Debug, Clone)]
pub struct Record {
    kind: &'static str,
    /// `,"name":value` for each field, in order. Bytes, not a `serde_json::Map`: the map
    /// sorts its keys, and field order is part of the hashed bytes.
    body: Vec<u8>,
    /// Each field's name and where its bytes end in `body` (0 when not known).
    fields: Vec<(String, usize)>,
    /// Why a field or event could not be serialized; [`Record::encode`] reports it.
    error: Option<String>,
}

impl Record {
    /// A record of type `kind` (`sign.request`, `sign.decision`, ...; see
    /// [`Kind`](crate::events::Kind)). The type must be made of `a-z`, `0-9`, `.` and `_`; the
    /// writer refuses anything else ([`Record::encode`]).
    pub fn new(kind: &'static str) -> Record {
        Record {
            kind,
            body: Vec::with_capacity(256),
            fields: Vec::new(),
            error: None,
        }
    }

    /// The record of a typed event: its members in the order of its struct, serialized as
    /// [`Record::field`] would serialize them one by one (the same bytes).
    pub fn from_event<E: Event + ?Sized>(event: &E) -> Record {
        let mut record = Record::new(event.kind().as_str());
        let mut json = Vec::with_capacity(256);
        if let Err(e) = serde_json::to_writer(&mut json, event) {
            record.error = Some(e.to_string());
            return record;
        }
        match crate::events::member_names(&json) {
            Err(e) => record.error = Some(e),
            Ok(names) => {
                // `{"a":1,"b":2}` is `,"a":1,"b":2` after the envelope; `{}` is nothing. The
                // members' own bytes are kept as serde_json wrote them.
                if let Some(inner) = json.get(1..json.len() - 1).filter(|i| !i.is_empty()) {
                    record.body.push(b',');
                    record.body.extend_from_slice(inner);
                }
                // Where each member ends is not known here; the length is checked as a whole.
                record.fields = names.into_iter().map(|n| (n, 0)).collect();
            }
        }
        record
    }

    /// Adds a field after the ones already added. Names must be unique within the record and
    /// must not be one of the envelope names (`v`, `seq`, `ts`, `type`, `prev`);
    /// the writer refuses records that break this ([`Record::encode`]).
    pub fn field(mut self, name: &str, value: impl Into<serde_json::Value>) -> Record {
        let value = value.into();
        self.body.push(b',');
        let written = serde_json::to_writer(&mut self.body, name)
            .and_then(|()| {
                self.body.push(b':');
                serde_json::to_writer(&mut self.body, &value)
            })
            .map_err(|e| format!("field `{}`: {e}", name.escape_debug()));
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
        self.fields.push((name.to_owned(), self.body.len()));
        self
    }

    /// The record type.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The body field names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(name, _)| name.as_str())
    }

    /// The body bytes as they appear in the line: `,"name":value` for each field, in order.
    /// Checks everything the writer thread relies on, so the writer never has to refuse a
    /// record it has already assigned a sequence number to.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        Ok(self.body.clone())
    }

    /// [`Record::encode`], without copying the bytes.
    pub fn into_body(self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        Ok(self.body)
    }

    fn check(&self) -> Result<(), RecordError> {
        let invalid = |why: String| {
            RecordError::Invalid(format!("record `{}`: {why}", self.kind.escape_debug()))
        };
        if self.kind.is_empty() || self.kind.len() > MAX_KIND_BYTES {
            return Err(invalid(format!(
                "the type must be 1 to {MAX_KIND_BYTES} bytes long"
            )));
        }
        if !self
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        {
            return Err(invalid(
                "the type may only contain a-z, 0-9, `.` and `_`".to_owned(),
            ));
        }
        if let Some(e) = &self.error {
            return Err(invalid(e.clone()));
        }
        for (i, (name, end)) in self.fields.iter().enumerate() {
            if RESERVED.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "field `{name}` is reserved for the envelope"
                )));
            }
            // Records have a handful of fields; a quadratic scan beats building a set.
            if self.fields[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(invalid(format!(
                    "field `{}` appears twice",
                    name.escape_debug()
                )));
            }
            if end + ENVELOPE_BYTES > MAX_LINE_BYTES {
                return Err(invalid(format!(
                    "the record would be longer than {MAX_LINE_BYTES} bytes (at field `{}`)",
                    name.escape_debug()
                )));
            }
        }
        if self.body.len() + ENVELOPE_BYTES > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "the record would be longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn encode_keeps_insertion_order_and_escapes() {
        let rec = Record::new("sign.request")
            .field("zeta", 1)
            .field("alpha", "a\"b\nc")
            .field("mid", serde_json::json!({"b": 1, "a": [true, null]}))
            .field("none", Option::<String>::None);
        let body = rec.encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#","zeta":1,"alpha":"a\"b\nc","mid":{"a":[true,null],"b":1},"none":null"#
        );
        assert!(!body.contains(&b'\n'));
    }

    #[test]
    fn encode_refuses_reserved_duplicate_and_bad_type() {
        for name in RESERVED {
            let err = Record::new("x").field(name, 1).encode().unwrap_err();
            assert!(
                err.to_string().contains("reserved for the envelope"),
                "{err}"
            );
        }
        let err = Record::new("x")
            .field("a", 1)
            .field("a", 2)
            .encode()
            .unwrap_err();
        assert!(err.to_string().contains("field `a` appears twice"), "{err}");
        let err = Record::new("Sign Request").encode().unwrap_err();
        assert!(err.to_string().contains("may only contain"), "{err}");
        let err = Record::new("").encode().unwrap_err();
        assert!(err.to_string().contains("1 to 64 bytes"), "{err}");
    }

    #[test]
    fn encode_refuses_oversized_records() {
        let err = Record::new("x")
            .field("big", "a".repeat(MAX_LINE_BYTES))
            .encode()
            .unwrap_err();
        assert!(
            err.to_string().contains("longer than 1048576 bytes"),
            "{err}"
        );
    }
}
