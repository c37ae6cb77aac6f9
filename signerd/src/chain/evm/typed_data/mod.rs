//! [EIP-712](https://eips.ethereum.org/EIPS/eip-712) typed data as `eth_signTypedData_v4`
//! JSON: validated, hashed (`encode`), classified by its full type structure and domain into
//! the standard it is (`classify`: permits, EIP-3009 authorizations, Safe transactions) and
//! summarized into the facts the policy matches on.
//!
//! What the caller (and the audit log) sees must be exactly what is signed, so this module
//! is stricter than wallets: it refuses duplicate JSON keys (parsers disagree on which one
//! wins), message members that no type declares (they would be shown but not signed),
//! missing struct members, domain members outside EIP-712's five, and an `EIP712Domain`
//! type that does not describe the domain object (alloy hashes the domain object, other
//! tools hash by the declared type), type names no wallet accepts, and values in any but
//! their one documented spelling. It must never return a hash for input it had to guess
//! about, and it must never spend more than a bounded amount of work on one request.

use std::collections::{BTreeMap, BTreeSet};

use alloy_primitives::{B256, keccak256};
use signerd_policy::{Action, TypedDataFacts};

use super::EvmError;

mod classify;
mod encode;
mod json;

use json::J;

pub use encode::{MAX_ENCODED_TYPES_BYTES, MAX_ENCODED_VALUES};

/// Largest `typed_data_json` accepted, in bytes.
pub const MAX_TYPED_DATA_JSON_BYTES: usize = 256 * 1024;
/// Most type definitions accepted in `types` (including `EIP712Domain`).
pub const MAX_TYPED_DATA_TYPES: usize = 64;
/// Most members accepted in one type definition.
pub const MAX_TYPED_DATA_MEMBERS: usize = 256;
/// Longest type name, member name or member type string accepted, in bytes.
const MAX_TYPE_STRING_BYTES: usize = 256;
/// Longest error reason returned; reasons can quote names from the request.
const MAX_REASON_CHARS: usize = 512;

const FIELD: &str = "typed_data_json";
const TOP_LEVEL: [&str; 4] = ["types", "primaryType", "domain", "message"];
/// EIP-712's domain members with their types, in the order `EIP712Domain` must list them.
const DOMAIN_MEMBERS: [(&str, &str); 5] = [
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
];
const DOMAIN: &str = "EIP712Domain";

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

/// EIP-712 signing hash of `eth_signTypedData_v4` JSON and its action.
///
/// The work is bounded by the input's size: [`MAX_TYPED_DATA_JSON_BYTES`],
/// [`MAX_TYPED_DATA_TYPES`], [`MAX_TYPED_DATA_MEMBERS`], [`MAX_ENCODED_TYPES_BYTES`] of type
/// strings (checked before they are built) and [`MAX_ENCODED_VALUES`] values.
pub fn prepare_typed_data(key_id: &str, json: &str) -> Result<(B256, Action), EvmError> {
    if json.len() > MAX_TYPED_DATA_JSON_BYTES {
        return Err(invalid(format!(
            "is {} bytes; at most {MAX_TYPED_DATA_JSON_BYTES} accepted",
            json.len()
        )));
    }
    let root = json::parse(json).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
    let Some(top) = root.as_obj() else {
        return Err(invalid(
            "must be a JSON object with types, primaryType, domain and message",
        ));
    };
    if let Some((k, _)) = top.iter().find(|(k, _)| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown top-level member {k:?}; expected only types, primaryType, domain and message"
        )));
    }
    let member = |k: &str| {
        root.get(k)
            .ok_or_else(|| invalid(format!("missing top-level member {k:?}")))
    };
    let (types_json, primary, domain, message) = (
        member("types")?,
        member("primaryType")?,
        member("domain")?,
        member("message")?,
    );
    let mut types = encode::Types::new(check_types(types_json)?);
    let Some(primary) = primary.as_str() else {
        return Err(invalid("primaryType must be a string"));
    };
    if primary == DOMAIN {
        return Err(invalid(
            "primaryType EIP712Domain (signing the domain alone) is not accepted",
        ));
    }
    if !types.structs.contains_key(primary) {
        return Err(invalid(format!(
            "primaryType {primary:?} is not defined in types"
        )));
    }
    check_domain(&types, domain)?;
    types.prepare(&[DOMAIN, primary]).map_err(invalid)?;
    let domain_separator = types
        .hash_struct(DOMAIN, domain, "domain")
        .map_err(invalid)?;
    let message_hash = types
        .hash_struct(primary, message, "message")
        .map_err(invalid)?;
    let mut preimage = [0u8; 66];
    preimage[..2].copy_from_slice(&[0x19, 0x01]);
    preimage[2..34].copy_from_slice(domain_separator.as_slice());
    preimage[34..].copy_from_slice(message_hash.as_slice());
    let hash = keccak256(preimage);

    // Values were checked by the encoder, so these reads cannot fail on a valid request.
    let domain_facts = TypedDataFacts {
        primary_type: primary.to_owned(),
        domain_name: domain.get("name").and_then(J::as_str).map(str::to_owned),
        domain_chain_id: domain
            .get("chainId")
            .and_then(|v| encode::parse_uint(v, 256).ok()),
        verifying_contract: domain
            .get("verifyingContract")
            .and_then(|v| encode::parse_address(v).ok()),
        ..TypedDataFacts::default()
    };
    let encoded_primary = types.encode_type(primary).unwrap_or_default();
    let action = classify::action(key_id, domain_facts, encoded_primary, message);
    Ok((hash, action))
}

/// Validates `types`: names, member names and member types (every struct a member names
/// must be defined), within the size bounds.
fn check_types(v: &J) -> Result<BTreeMap<String, Vec<encode::Member>>, EvmError> {
    let Some(obj) = v.as_obj() else {
        return Err(invalid("types must be a JSON object"));
    };
    if obj.len() > MAX_TYPED_DATA_TYPES {
        return Err(invalid(format!(
            "types defines {} types; at most {MAX_TYPED_DATA_TYPES} accepted",
            obj.len()
        )));
    }
    if !obj.iter().any(|(k, _)| k == DOMAIN) {
        return Err(invalid("types must define EIP712Domain"));
    }
    for (name, _) in obj {
        if name.len() > MAX_TYPE_STRING_BYTES {
            return Err(invalid(format!(
                "a type name is {} bytes; at most {MAX_TYPE_STRING_BYTES} accepted",
                name.len()
            )));
        }
        if !encode::is_struct_name(name) {
            return Err(invalid(format!(
                "type name {name:?} is not accepted: a struct name is an identifier \
                 ([A-Za-z_$][A-Za-z0-9_$]*) that is not a built-in type (uint8, bytes32, \
                 function, ...)"
            )));
        }
    }
    let names: BTreeSet<&str> = obj.iter().map(|(k, _)| k.as_str()).collect();
    let mut structs = BTreeMap::new();
    for (name, members) in obj {
        let J::Arr(members) = members else {
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
        let mut list: Vec<encode::Member> = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let member = m.as_obj().and_then(|o| {
                let n = m.get("name")?.as_str()?;
                let t = m.get("type")?.as_str()?;
                (o.len() == 2).then_some((n, t))
            });
            let Some((n, t)) = member else {
                return Err(invalid(format!(
                    "types.{name}[{i}] must be an object with exactly a string name and a string type"
                )));
            };
            if n.len() > MAX_TYPE_STRING_BYTES || t.len() > MAX_TYPE_STRING_BYTES {
                return Err(invalid(format!(
                    "types.{name}[{i}]: names and types are at most {MAX_TYPE_STRING_BYTES} bytes"
                )));
            }
            if !encode::is_identifier(n) {
                return Err(invalid(format!(
                    "types.{name}[{i}].name {n:?} is not an identifier ([A-Za-z_$][A-Za-z0-9_$]*)"
                )));
            }
            if list.iter().any(|prev| prev.name == n) {
                return Err(invalid(format!("types.{name} declares member {n:?} twice")));
            }
            let ty = encode::parse_type(t, &names)
                .map_err(|e| invalid(format!("types.{name}[{i}].type: {e}")))?;
            if ty.base == encode::Base::Struct(DOMAIN.to_owned()) {
                return Err(invalid(format!(
                    "types.{name}[{i}].type: EIP712Domain cannot be a member type"
                )));
            }
            list.push(encode::Member {
                name: n.to_owned(),
                written: t.to_owned(),
                ty,
            });
        }
        structs.insert(name.clone(), list);
    }
    Ok(structs)
}

/// The declared `EIP712Domain` must list exactly the members of the domain object, with
/// EIP-712's types, in EIP-712's order: alloy and some wallets hash the domain object,
/// others the declared type, and the two must not differ.
fn check_domain(types: &encode::Types, domain: &J) -> Result<(), EvmError> {
    let Some(obj) = domain.as_obj() else {
        return Err(invalid("domain must be a JSON object"));
    };
    if let Some((k, _)) = obj
        .iter()
        .find(|(k, _)| !DOMAIN_MEMBERS.iter().any(|(n, _)| n == k))
    {
        return Err(invalid(format!(
            "domain member {k:?} is not one of EIP-712's name, version, chainId, verifyingContract, salt"
        )));
    }
    let declared: Vec<(&str, &str)> = types
        .structs
        .get(DOMAIN)
        .into_iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.written.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = DOMAIN_MEMBERS
        .iter()
        .filter(|(n, _)| obj.iter().any(|(k, _)| k == n))
        .copied()
        .collect();
    if declared != expected {
        let show = |v: &[(&str, &str)]| {
            let parts: Vec<String> = v.iter().map(|(n, t)| format!("{t} {n}")).collect();
            format!("EIP712Domain({})", parts.join(","))
        };
        return Err(invalid(format!(
            "types.EIP712Domain declares {:?} but the domain object has {:?}; \
             they must list the same members in EIP-712 order, with EIP-712's types",
            show(&declared),
            show(&expected)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
