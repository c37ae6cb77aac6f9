//! [EIP-712](https://eips.ethereum.org/EIPS/eip-712) typed data as `eth_signTypedData_v4`
//! JSON: validated, hashed with alloy, and summarized into the facts the policy matches on
//! (primary type, domain name, chain id, verifying contract).
//!
//! What the caller (and the audit log) sees must be exactly what is signed, so this module
//! is stricter than wallets: it refuses duplicate JSON keys (parsers disagree on which one
//! wins), message members that no type declares (they would be shown but not signed),
//! missing struct members, domain members outside EIP-712's five, and an `EIP712Domain`
//! type that does not describe the domain object (alloy hashes the domain object, other
//! tools hash by the declared type). It must never return a hash for input it had to guess
//! about.

use std::collections::BTreeMap;
use std::fmt;

use alloy_dyn_abi::eip712::{Resolver, TypedData};
use alloy_primitives::B256;
use alloy_sol_types::Eip712Domain;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use signerd_policy::{Action, Kind, TypedDataFacts};

use super::EvmError;

/// Largest `typed_data_json` accepted, in bytes.
pub const MAX_TYPED_DATA_JSON_BYTES: usize = 256 * 1024;
/// Most type definitions accepted in `types` (including `EIP712Domain`). Bounds the depth of
/// alloy's recursive type resolution.
pub const MAX_TYPED_DATA_TYPES: usize = 64;
/// Most members accepted in one type definition.
pub const MAX_TYPED_DATA_MEMBERS: usize = 256;
/// Longest type name or member type string accepted, in bytes.
const MAX_TYPE_STRING_BYTES: usize = 256;
/// Most array dimensions accepted in one member type (`uint256[][]` has 2).
const MAX_ARRAY_DIMS: usize = 8;
/// Longest error reason returned; alloy's messages can quote whole JSON values.
const MAX_REASON_CHARS: usize = 512;

const FIELD: &str = "typed_data_json";
const TOP_LEVEL: [&str; 4] = ["types", "primaryType", "domain", "message"];
const DOMAIN_MEMBERS: [&str; 5] = ["name", "version", "chainId", "verifyingContract", "salt"];

/// Builds the error, bounded in length and with control characters escaped: reasons quote
/// names from the request and end up in logs.
fn invalid(reason: impl Into<String>) -> EvmError {
    let raw: String = reason.into();
    let mut reason = String::with_capacity(raw.len().min(MAX_REASON_CHARS + 3));
    for (i, c) in raw.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            reason.push_str("...");
            break;
        }
        if c.is_control() {
            reason.extend(c.escape_default());
        } else {
            reason.push(c);
        }
    }
    EvmError::InvalidField {
        field: FIELD,
        reason,
    }
}

/// EIP-712 hash of `eth_signTypedData_v4` JSON and its action.
pub fn prepare_typed_data(key_id: &str, json: &str) -> Result<(B256, Action), EvmError> {
    if json.len() > MAX_TYPED_DATA_JSON_BYTES {
        return Err(invalid(format!(
            "is {} bytes; at most {MAX_TYPED_DATA_JSON_BYTES} accepted",
            json.len()
        )));
    }
    let root = serde_json::from_str::<StrictValue>(json)
        .map_err(|e| invalid(format!("invalid JSON: {e}")))?
        .0;
    let Some(top) = root.as_object() else {
        return Err(invalid(
            "must be a JSON object with types, primaryType, domain and message",
        ));
    };
    if let Some(k) = top.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown top-level member {k:?}; expected only types, primaryType, domain and message"
        )));
    }
    if let Some(k) = TOP_LEVEL.iter().find(|k| !top.contains_key(**k)) {
        return Err(invalid(format!("missing top-level member {k:?}")));
    }
    let types = check_types(&top["types"])?;
    let Some(domain) = top["domain"].as_object() else {
        return Err(invalid("domain must be a JSON object"));
    };
    if let Some(k) = domain
        .keys()
        .find(|k| !DOMAIN_MEMBERS.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "domain member {k:?} is not one of EIP-712's name, version, chainId, verifyingContract, salt"
        )));
    }
    let Some(primary) = top["primaryType"].as_str() else {
        return Err(invalid("primaryType must be a string"));
    };
    if primary == "EIP712Domain" {
        return Err(invalid(
            "primaryType EIP712Domain (signing the domain alone) is not accepted",
        ));
    }
    if !types.contains_key(primary) {
        return Err(invalid(format!(
            "primaryType {primary:?} is not defined in types"
        )));
    }
    check_members(&types, primary, &top["message"], "message")?;

    // Built from its parts rather than through `TypedData`'s own `Deserialize`, whose
    // untagged wrapper replaces every error with "did not match any variant".
    let typed = TypedData {
        domain: Eip712Domain::deserialize(&top["domain"])
            .map_err(|e| invalid(format!("domain: {e}")))?,
        resolver: Resolver::deserialize(&top["types"])
            .map_err(|e| invalid(format!("types: {e}")))?,
        primary_type: primary.to_owned(),
        message: top["message"].clone(),
    };
    let declared = typed
        .resolver
        .encode_type("EIP712Domain")
        .map_err(|e| invalid(format!("types.EIP712Domain: {e}")))?;
    let actual = typed.domain.encode_type();
    if declared != actual {
        return Err(invalid(format!(
            "types.EIP712Domain declares {declared:?} but the domain object has {actual:?}; \
             they must list the same members in EIP-712 order"
        )));
    }
    let hash = typed
        .eip712_signing_hash()
        .map_err(|e| invalid(e.to_string()))?;

    let mut action = Action::new(key_id, Kind::Eip712TypedData);
    // ERC-2612 `Permit` grants a spender an allowance: the policy needs who and how much.
    // A member that is absent or does not parse stays `None`, which the policy treats as
    // indeterminate (deny).
    let (spender, permit_value) = if typed.primary_type == "Permit" {
        let member = |name: &str| typed.message.get(name);
        let spender = member("spender")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<alloy_primitives::Address>().ok());
        let value = member("value").and_then(|v| match v {
            Value::String(s) => s.parse::<alloy_primitives::U256>().ok(),
            Value::Number(n) => n.to_string().parse::<alloy_primitives::U256>().ok(),
            _ => None,
        });
        (spender, value)
    } else {
        (None, None)
    };
    action.typed_data = Some(TypedDataFacts {
        primary_type: typed.primary_type.clone(),
        domain_name: typed.domain.name.as_ref().map(|n| n.to_string()),
        domain_chain_id: typed.domain.chain_id,
        verifying_contract: typed.domain.verifying_contract,
        spender,
        permit_value,
    });
    Ok((hash, action))
}

/// Struct type name -> its members as (name, type), in declaration order.
type Types<'a> = BTreeMap<&'a str, Vec<(&'a str, &'a str)>>;

/// Checks the shape and bounds of `types` before alloy parses and resolves it.
fn check_types(v: &Value) -> Result<Types<'_>, EvmError> {
    let Some(obj) = v.as_object() else {
        return Err(invalid("types must be a JSON object"));
    };
    if obj.len() > MAX_TYPED_DATA_TYPES {
        return Err(invalid(format!(
            "types defines {} types; at most {MAX_TYPED_DATA_TYPES} accepted",
            obj.len()
        )));
    }
    if !obj.contains_key("EIP712Domain") {
        return Err(invalid("types must define EIP712Domain"));
    }
    let mut types = Types::new();
    for (name, members) in obj {
        if name.len() > MAX_TYPE_STRING_BYTES {
            return Err(invalid(format!(
                "a type name is {} bytes; at most {MAX_TYPE_STRING_BYTES} accepted",
                name.len()
            )));
        }
        let Some(members) = members.as_array() else {
            return Err(invalid(format!(
                "types.{name} must be an array of {{name, type}} objects"
            )));
        };
        if members.len() > MAX_TYPED_DATA_MEMBERS {
            return Err(invalid(format!(
                "types.{name} has {} members; at most {MAX_TYPED_DATA_MEMBERS} accepted",
                members.len()
            )));
        }
        let mut list: Vec<(&str, &str)> = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let member = m.as_object().and_then(|o| {
                let n = o.get("name")?.as_str()?;
                let t = o.get("type")?.as_str()?;
                (o.len() == 2).then_some((n, t))
            });
            let Some((n, t)) = member else {
                return Err(invalid(format!(
                    "types.{name}[{i}] must be an object with exactly a string name and a string type"
                )));
            };
            if t.len() > MAX_TYPE_STRING_BYTES || t.matches('[').count() > MAX_ARRAY_DIMS {
                return Err(invalid(format!(
                    "types.{name}[{i}].type is too complex (at most {MAX_TYPE_STRING_BYTES} bytes and \
                     {MAX_ARRAY_DIMS} array dimensions)"
                )));
            }
            if list.iter().any(|(prev, _)| *prev == n) {
                return Err(invalid(format!("types.{name} declares member {n:?} twice")));
            }
            list.push((n, t));
        }
        types.insert(name.as_str(), list);
    }
    Ok(types)
}

/// Refuses message members that the declared types do not include (EIP-712 hashes only
/// declared members, so an extra one would be displayed and logged without being signed),
/// and names declared members that are missing.
///
/// Wrong shapes and values are left to alloy's coercion, which reports them. Recursion
/// follows the JSON value, whose depth `serde_json` limits.
fn check_members(types: &Types<'_>, ty: &str, v: &Value, path: &str) -> Result<(), EvmError> {
    if let Some(inner) = ty
        .strip_suffix(']')
        .and_then(|t| t.rfind('[').map(|i| &t[..i]))
    {
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                check_members(types, inner, item, &format!("{path}[{i}]"))?;
            }
        }
        return Ok(());
    }
    let (Some(members), Some(obj)) = (types.get(ty), v.as_object()) else {
        return Ok(());
    };
    if let Some(k) = obj.keys().find(|k| !members.iter().any(|(n, _)| n == k)) {
        return Err(invalid(format!(
            "{path}.{k:?} is not a member of type {ty}; undeclared members would not be signed"
        )));
    }
    for (n, t) in members {
        let Some(child) = obj.get(*n) else {
            return Err(invalid(format!(
                "{path}.{n} is missing; type {ty} declares it"
            )));
        };
        check_members(types, t, child, &format!("{path}.{n}"))?;
    }
    Ok(())
}

/// A JSON value parsed without tolerating duplicate object keys: `serde_json` keeps the last
/// duplicate, other parsers the first, so a duplicate could make a client display one value
/// while signerd signs another.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(de::Error::custom(format!("duplicate key {shown:?}")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}
