//! Recognizes the typed-data standards that authorize moving tokens or a Safe's assets, by
//! the primary type's full `encodeType` (its members, their types and names, and every
//! struct it uses) and by the domain members each standard needs — never by the primary
//! type's name alone (a Uniswap V3 position `Permit` is not an EIP-2612 `Permit`).
//!
//! Each recognized payload is decoded into what it authorizes: token grants (token,
//! spender or recipient, amount), the deadline, and for a `SafeTx` its call, so that rules
//! and limits apply to it. Anything else stays opaque typed data (`eip712_typed_data`),
//! which only a policy rule naming that kind allows.
//!
//! - EIP-2612: <https://eips.ethereum.org/EIPS/eip-2612>
//! - DAI permit: `Permit(address holder,address spender,uint256 nonce,uint256 expiry,bool allowed)`
//! - Permit2: <https://github.com/Uniswap/permit2> (`PermitHash.sol`)
//! - EIP-3009: <https://eips.ethereum.org/EIPS/eip-3009>
//! - Safe: `SafeTx` of Safe contracts v1.0 and later (`Safe.sol`'s `SAFE_TX_TYPEHASH`)

use alloy_primitives::{Address, U256};
use signerd_policy::{Action, Kind, SafeTxFacts, TokenGrant, TypedDataFacts, TypedStandard};

use super::encode::{parse_address, parse_uint};
use super::json::J;

const EIP2612: &str =
    "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)";
const DAI: &str =
    "Permit(address holder,address spender,uint256 nonce,uint256 expiry,bool allowed)";
const PERMIT_DETAILS: &str =
    "PermitDetails(address token,uint160 amount,uint48 expiration,uint48 nonce)";
const TOKEN_PERMISSIONS: &str = "TokenPermissions(address token,uint256 amount)";
const PERMIT2_SINGLE: &str =
    "PermitSingle(PermitDetails details,address spender,uint256 sigDeadline)";
const PERMIT2_BATCH: &str =
    "PermitBatch(PermitDetails[] details,address spender,uint256 sigDeadline)";
const PERMIT2_TRANSFER: &str =
    "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)";
const PERMIT2_BATCH_TRANSFER: &str = "PermitBatchTransferFrom(TokenPermissions[] permitted,address spender,uint256 nonce,uint256 deadline)";
const EIP3009_FIELDS: &str =
    "(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)";
const SAFE_TX: &str = "SafeTx(address to,uint256 value,bytes data,uint8 operation,uint256 safeTxGas,uint256 baseGas,uint256 gasPrice,address gasToken,address refundReceiver,uint256 nonce)";

/// Which standard `encode_type` (the primary type's EIP-712 `encodeType`) and the domain
/// make a payload, if any.
fn standard(encode_type: &str, facts: &TypedDataFacts) -> Option<TypedStandard> {
    let token_domain = facts.domain_chain_id.is_some() && facts.verifying_contract.is_some();
    let permit2_domain = token_domain && facts.domain_name.as_deref() == Some("Permit2");
    let is = |parts: &[&str]| {
        let mut rest = encode_type;
        parts.iter().all(|p| match rest.strip_prefix(p) {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        }) && rest.is_empty()
    };
    if token_domain && is(&[EIP2612]) {
        return Some(TypedStandard::Eip2612Permit);
    }
    if token_domain && is(&[DAI]) {
        return Some(TypedStandard::DaiPermit);
    }
    if token_domain && is(&["TransferWithAuthorization", EIP3009_FIELDS]) {
        return Some(TypedStandard::Eip3009Transfer);
    }
    if token_domain && is(&["ReceiveWithAuthorization", EIP3009_FIELDS]) {
        return Some(TypedStandard::Eip3009Receive);
    }
    if permit2_domain {
        if is(&[PERMIT2_SINGLE, PERMIT_DETAILS]) {
            return Some(TypedStandard::Permit2Single);
        }
        if is(&[PERMIT2_BATCH, PERMIT_DETAILS]) {
            return Some(TypedStandard::Permit2Batch);
        }
        if is(&[PERMIT2_TRANSFER, TOKEN_PERMISSIONS]) {
            return Some(TypedStandard::Permit2TransferFrom);
        }
        if is(&[PERMIT2_BATCH_TRANSFER, TOKEN_PERMISSIONS]) {
            return Some(TypedStandard::Permit2BatchTransferFrom);
        }
    }
    if facts.verifying_contract.is_some() && is(&[SAFE_TX]) {
        return Some(TypedStandard::SafeTx);
    }
    None
}

/// The action of typed data whose values the encoder has already checked against their
/// types (so every read below succeeds; a failed read leaves the fact out, which the policy
/// treats as indeterminate).
pub(super) fn action(
    key_id: &str,
    mut facts: TypedDataFacts,
    encode_type: &str,
    message: &J,
) -> Action {
    let Some(std) = standard(encode_type, &facts) else {
        let mut action = Action::new(key_id, Kind::Eip712TypedData);
        action.typed_data = Some(facts);
        return action;
    };
    let mut action = Action::new(key_id, std.kind());
    let addr = |v: &J, k: &str| v.get(k).and_then(|x| parse_address(x).ok());
    let uint = |v: &J, k: &str| v.get(k).and_then(|x| parse_uint(x, 256).ok());
    let token = facts.verifying_contract;
    let grant = |token: Option<Address>, counterparty: Option<Address>, amount: Option<U256>| {
        Some(TokenGrant {
            token: token?,
            counterparty: counterparty?,
            amount: amount?,
        })
    };
    let mut grants: Vec<Option<TokenGrant>> = Vec::new();
    match std {
        TypedStandard::Eip2612Permit => {
            grants.push(grant(
                token,
                addr(message, "spender"),
                uint(message, "value"),
            ));
            facts.deadline = uint(message, "deadline");
        }
        TypedStandard::DaiPermit => {
            let amount = match message.get("allowed") {
                Some(J::Bool(true)) => Some(U256::MAX),
                Some(J::Bool(false)) => Some(U256::ZERO),
                _ => None,
            };
            grants.push(grant(token, addr(message, "spender"), amount));
            // DAI: an expiry of 0 means the permit never expires.
            facts.deadline = uint(message, "expiry").filter(|e| !e.is_zero());
        }
        TypedStandard::Permit2Single | TypedStandard::Permit2Batch => {
            let spender = addr(message, "spender");
            let details: Vec<&J> = match message.get("details") {
                Some(J::Arr(items)) => items.iter().collect(),
                Some(one @ J::Obj(_)) => vec![one],
                _ => Vec::new(),
            };
            for d in details {
                grants.push(grant(addr(d, "token"), spender, uint(d, "amount")));
            }
            if grants.is_empty() && std == TypedStandard::Permit2Single {
                grants.push(None);
            }
            facts.deadline = uint(message, "sigDeadline");
        }
        TypedStandard::Permit2TransferFrom | TypedStandard::Permit2BatchTransferFrom => {
            let spender = addr(message, "spender");
            let permitted: Vec<&J> = match message.get("permitted") {
                Some(J::Arr(items)) => items.iter().collect(),
                Some(one @ J::Obj(_)) => vec![one],
                _ => Vec::new(),
            };
            for p in permitted {
                grants.push(grant(addr(p, "token"), spender, uint(p, "amount")));
            }
            if grants.is_empty() && std == TypedStandard::Permit2TransferFrom {
                grants.push(None);
            }
            facts.deadline = uint(message, "deadline");
        }
        TypedStandard::Eip3009Transfer | TypedStandard::Eip3009Receive => {
            grants.push(grant(token, addr(message, "to"), uint(message, "value")));
            facts.deadline = uint(message, "validBefore");
        }
        TypedStandard::SafeTx => {
            action.chain_id = facts.domain_chain_id.and_then(|c| u64::try_from(c).ok());
            let data = match message.get("data") {
                Some(J::Str(s)) => s.strip_prefix("0x").and_then(|h| hex::decode(h).ok()),
                _ => None,
            };
            if let (Some(to), Some(value), Some(data)) =
                (addr(message, "to"), uint(message, "value"), data)
            {
                action.to = Some(to);
                action.value = value;
                let (selector, erc20) = super::super::tx::decode_call(to, &data);
                action.selector = selector;
                action.erc20 = erc20.map(|(_, e)| e);
                // Kept even when empty: a call without calldata is then no function's call,
                // rather than a call whose calldata is unknown.
                action.calldata = Some(data.into());
            }
            let operation = message
                .get("operation")
                .and_then(|v| parse_uint(v, 8).ok())
                .and_then(|o| u8::try_from(o).ok());
            facts.safe_tx = (|| {
                Some(SafeTxFacts {
                    operation: operation?,
                    safe_tx_gas: uint(message, "safeTxGas")?,
                    base_gas: uint(message, "baseGas")?,
                    gas_price: uint(message, "gasPrice")?,
                    gas_token: addr(message, "gasToken")?,
                    refund_receiver: addr(message, "refundReceiver")?,
                    nonce: uint(message, "nonce")?,
                })
            })();
        }
    }
    // A grant that did not decode leaves the list incomplete: drop them all, so the policy
    // sees a recognized permit without grants and treats it as indeterminate.
    facts.grants = if grants.iter().all(Option::is_some) {
        grants.into_iter().flatten().collect()
    } else {
        Vec::new()
    };
    facts.standard = Some(std);
    action.typed_data = Some(facts);
    action
}
