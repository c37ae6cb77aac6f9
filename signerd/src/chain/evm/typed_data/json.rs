//! The typed-data JSON tree: parsed by `serde_json`, with two things `serde_json::Value`
//! cannot give without changing how the whole program parses JSON.
//!
//! - Duplicate object keys are refused: `serde_json` keeps the last duplicate, other parsers
//!   the first, so a duplicate could make a wallet display one value while signerd signs
//!   another.
//! - Numbers keep their exact text: a JSON integer beyond 64 bits would otherwise reach us as
//!   a float, rounded. The parser marks where each number is; the numbers' texts are then
//!   taken from the input in document order (which is the order the parser visits them in).
//!
//! Nesting is bounded by [`MAX_DEPTH`].

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted. EIP-712 payloads in use nest a few levels.
pub(super) const MAX_DEPTH: usize = 64;

/// A JSON value as the typed-data encoder sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum J {
    Null,
    Bool(bool),
    /// The number exactly as written in the input (`12`, `-3`, `1e3`, `1.5`).
    Num(String),
    Str(String),
    Arr(Vec<J>),
    /// Members in document order; keys are unique.
    Obj(Vec<(String, J)>),
}

impl J {
    pub(super) fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn as_obj(&self) -> Option<&[(String, J)]> {
        match self {
            J::Obj(m) => Some(m),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub(super) fn describe(&self) -> &'static str {
        match self {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Num(_) => "a number",
            J::Str(_) => "a string",
            J::Arr(_) => "an array",
            J::Obj(_) => "an object",
        }
    }
}

/// Parses `text` as one JSON value.
pub(super) fn parse(text: &str) -> Result<J, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut tree = Seed { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    let mut numbers = number_texts(text);
    fill_numbers(&mut tree, &mut numbers)?;
    if numbers.next().is_some() {
        return Err("internal error: more numbers in the text than in the tree".into());
    }
    Ok(tree)
}

/// Replaces the parser's number placeholders with the texts, in document order.
fn fill_numbers<'a>(v: &mut J, texts: &mut impl Iterator<Item = &'a str>) -> Result<(), String> {
    match v {
        J::Num(n) => {
            let Some(t) = texts.next() else {
                return Err("internal error: fewer numbers in the text than in the tree".into());
            };
            t.clone_into(n);
        }
        J::Arr(items) => {
            for item in items {
                fill_numbers(item, texts)?;
            }
        }
        J::Obj(members) => {
            for (_, item) in members {
                fill_numbers(item, texts)?;
            }
        }
        J::Null | J::Bool(_) | J::Str(_) => {}
    }
    Ok(())
}

/// The number tokens of valid JSON `text`, in order: everything outside strings that starts
/// with `-` or a digit, up to the next character that cannot be part of a number.
fn number_texts(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < b.len()
                        && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    {
                        i += 1;
                    }
                    return text.get(start..i);
                }
                _ => i += 1,
            }
        }
        None
    })
}

#[derive(Clone, Copy)]
struct Seed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = J;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<J, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed {
    fn nested<E: de::Error>(self) -> Result<Seed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "nested deeper than {MAX_DEPTH} arrays and objects"
            )));
        }
        Ok(Seed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = J;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }

    // Numbers are placeholders here; `parse` fills in their exact text.
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<J, E> {
        Ok(J::Num(String::new()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<J, E> {
        Ok(J::Num(String::new()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<J, E> {
        Ok(J::Num(String::new()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<J, E> {
        Ok(J::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
        let inner = self.nested()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(J::Arr(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
        let inner = self.nested()?;
        let mut out: Vec<(String, J)> = Vec::new();
        // A set, not a scan of `out`: an object of 50,000 keys must not cost 10^9 compares.
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format!("duplicate key {shown:?}")));
            }
            let v = map.next_value_seed(inner)?;
            out.push((key, v));
        }
        Ok(J::Obj(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn numbers_keep_their_exact_text() {
        let big = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
        let j = parse(&format!(
            r#"{{"a": [1, -2, {big}, 1.5e3], "s": "x\"1 2", "b": {{"c": 0}}, "d": 7}}"#
        ))
        .unwrap();
        let J::Obj(m) = j else { panic!() };
        assert_eq!(
            m[0].1,
            J::Arr(vec![
                J::Num("1".into()),
                J::Num("-2".into()),
                J::Num(big.into()),
                J::Num("1.5e3".into())
            ])
        );
        assert_eq!(m[1].1, J::Str("x\"1 2".into()));
        assert_eq!(m[2].1, J::Obj(vec![("c".into(), J::Num("0".into()))]));
        assert_eq!(m[3].1, J::Num("7".into()));
    }

    #[test]
    fn duplicates_and_depth_are_refused() {
        assert!(
            parse(r#"{"a":1,"a":2}"#)
                .unwrap_err()
                .contains("duplicate key")
        );
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        parse(&ok).unwrap();
        assert!(parse("{} x").is_err());
        // A duplicate at the end of a large object is still found.
        let keys: Vec<String> = (0..50_000).map(|i| format!("\"k{i}\":0")).collect();
        let big = format!("{{{}}}", keys.join(","));
        assert!(matches!(parse(&big), Ok(J::Obj(m)) if m.len() == 50_000));
        let dup = format!("{{{},\"k7\":1}}", keys.join(","));
        assert!(parse(&dup).unwrap_err().contains("duplicate key \"k7\""));
    }
}
