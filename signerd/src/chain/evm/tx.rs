//! EVM transactions: legacy with [EIP-155](https://eips.ethereum.org/EIPS/eip-155) replay
//! protection, [EIP-2930](https://eips.ethereum.org/EIPS/eip-2930) (type 1) and
//! [EIP-1559](https://eips.ethereum.org/EIPS/eip-1559) (type 2), built from the request
//! fields, hashed for signing and encoded per [EIP-2718](https://eips.ethereum.org/EIPS/eip-2718)
//! once signed.
//!
//! This module validates every field and refuses anything it does not fully understand
//! (unknown or unsupported types, fields that do not belong to the type, oversize data);
//! it never fills in a default that changes what is signed, and never signs. Encoding and
//! hashing are alloy's, so the bytes signed are the bytes nodes verify.

use alloy_consensus::transaction::RlpEcdsaEncodableTx;
use alloy_consensus::{SignableTransaction, TxEip1559, TxEip2930, TxLegacy};
use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use alloy_sol_types::SolCall;
use signerd_policy::{Action, Erc20Call, Kind};
use signerd_proto::v1::{EvmTransactionType, SignEvmTransactionRequest};

use super::EvmError;
use super::fields::{parse_address, parse_b256, parse_fee, parse_u256};

/// Largest calldata accepted, in bytes. Far above any ordinary call; bounds memory and the
/// audit record.
pub const MAX_CALLDATA_BYTES: usize = 128 * 1024;
/// Largest contract-creation init code accepted, in bytes (same bound as calldata).
pub const MAX_INIT_CODE_BYTES: usize = 128 * 1024;
/// Most access-list entries accepted.
pub const MAX_ACCESS_LIST_ITEMS: usize = 256;
/// Most storage keys accepted across all access-list entries.
pub const MAX_ACCESS_LIST_STORAGE_KEYS: usize = 4096;
/// Largest chain id accepted: [EIP-2294](https://eips.ethereum.org/EIPS/eip-2294)'s bound,
/// `floor(u64::MAX / 2) - 36`, so that the legacy EIP-155 `v` (`chain_id * 2 + 35 + parity`)
/// always fits in 64 bits.
pub const MAX_CHAIN_ID: u64 = u64::MAX / 2 - 36;

/// ERC-20 calls that the policy understands by their arguments.
mod erc20 {
    #![allow(missing_docs, unreachable_pub)]

    alloy_sol_types::sol! {
        function transfer(address to, uint256 amount) external returns (bool);
        function transferFrom(address from, address to, uint256 amount) external returns (bool);
        function approve(address spender, uint256 amount) external returns (bool);
    }
}

/// The transaction types signerd builds.
#[derive(Debug, Clone)]
enum Tx {
    Legacy(TxLegacy),
    Eip2930(TxEip2930),
    Eip1559(TxEip1559),
}

/// A validated transaction ready to be signed: the exact signing hash and the decoded
/// [`Action`] the policy judges, both derived from the same fields.
#[derive(Debug, Clone)]
pub struct PreparedTx {
    tx: Tx,
    signing_hash: B256,
    action: Action,
}

/// A signed transaction, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// EIP-2718 encoding (RLP for legacy), ready for `eth_sendRawTransaction`.
    pub raw: Vec<u8>,
    /// keccak256 of `raw`.
    pub hash: B256,
    /// v as the transaction encodes it (EIP-155 value for legacy, y-parity for typed).
    pub v: u64,
}

impl PreparedTx {
    /// The hash to sign: keccak256 of the transaction's signing payload (EIP-155 RLP for
    /// legacy, `type || rlp(fields)` for typed transactions).
    pub fn signing_hash(&self) -> B256 {
        self.signing_hash
    }

    /// The decoded action for the policy.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// Attaches a signature and encodes the signed transaction.
    ///
    /// `r`, `s` are big-endian scalars of a signature over [`Self::signing_hash`] with `s` in
    /// the lower half of the curve order, and `y_parity` its recovery id; the key backends
    /// guarantee this. Nothing is re-checked here.
    pub fn encode_signed(&self, r: [u8; 32], s: [u8; 32], y_parity: bool) -> SignedTx {
        let sig = Signature::from_scalars_and_parity(B256::from(r), B256::from(s), y_parity);
        let mut raw = Vec::new();
        let v = match &self.tx {
            Tx::Legacy(tx) => {
                tx.eip2718_encode(&sig, &mut raw);
                // chain_id <= MAX_CHAIN_ID, checked when preparing, so this cannot saturate.
                tx.chain_id
                    .unwrap_or_default()
                    .saturating_mul(2)
                    .saturating_add(35 + u64::from(y_parity))
            }
            Tx::Eip2930(tx) => {
                tx.eip2718_encode(&sig, &mut raw);
                u64::from(y_parity)
            }
            Tx::Eip1559(tx) => {
                tx.eip2718_encode(&sig, &mut raw);
                u64::from(y_parity)
            }
        };
        let hash = keccak256(&raw);
        SignedTx { raw, hash, v }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EvmError {
    EvmError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// The transaction types signerd signs, as named in error messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TxType {
    Legacy,
    Eip2930,
    Eip1559,
}

impl TxType {
    fn name(self) -> &'static str {
        match self {
            TxType::Legacy => "legacy",
            TxType::Eip2930 => "EIP-2930",
            TxType::Eip1559 => "EIP-1559",
        }
    }
}

fn tx_type(raw: i32) -> Result<TxType, EvmError> {
    match EvmTransactionType::try_from(raw) {
        Ok(EvmTransactionType::Legacy) => Ok(TxType::Legacy),
        Ok(EvmTransactionType::Eip2930) => Ok(TxType::Eip2930),
        Ok(EvmTransactionType::Eip1559) => Ok(TxType::Eip1559),
        Ok(EvmTransactionType::Eip4844) => Err(EvmError::Unsupported(
            "EIP-4844 blob transactions are not supported; nothing was signed".to_owned(),
        )),
        Ok(EvmTransactionType::Eip7702) => Err(EvmError::Unsupported(
            "EIP-7702 set-code transactions are not supported; nothing was signed".to_owned(),
        )),
        Ok(EvmTransactionType::Unspecified) => Err(EvmError::Unsupported(
            "transaction type is unspecified; set type to EVM_TRANSACTION_TYPE_LEGACY, \
             EVM_TRANSACTION_TYPE_EIP2930 or EVM_TRANSACTION_TYPE_EIP1559; nothing was signed"
                .to_owned(),
        )),
        Err(_) => Err(invalid("type", format!("unknown transaction type {raw}"))),
    }
}

/// A fee field the type requires: present and a valid u128 amount.
fn required_fee(field: &'static str, s: &str, ty: TxType) -> Result<u128, EvmError> {
    if s.is_empty() {
        return Err(invalid(
            field,
            format!(
                "is required for {} transactions (wei per gas, decimal or 0x-prefixed hex)",
                ty.name()
            ),
        ));
    }
    parse_fee(s).map_err(|r| invalid(field, r))
}

/// A field the type does not have must be left empty, so that a caller who set it learns
/// it would have been ignored.
fn forbidden(field: &'static str, set: bool, ty: TxType, hint: &str) -> Result<(), EvmError> {
    if set {
        return Err(invalid(
            field,
            format!("is not used by {} transactions; {hint}", ty.name()),
        ));
    }
    Ok(())
}

fn access_list(req: &SignEvmTransactionRequest) -> Result<AccessList, EvmError> {
    const FIELD: &str = "access_list";
    if req.access_list.len() > MAX_ACCESS_LIST_ITEMS {
        return Err(invalid(
            FIELD,
            format!(
                "has {} entries; at most {MAX_ACCESS_LIST_ITEMS} accepted",
                req.access_list.len()
            ),
        ));
    }
    let total_keys: usize = req.access_list.iter().map(|i| i.storage_keys.len()).sum();
    if total_keys > MAX_ACCESS_LIST_STORAGE_KEYS {
        return Err(invalid(
            FIELD,
            format!(
                "has {total_keys} storage keys in total; at most {MAX_ACCESS_LIST_STORAGE_KEYS} accepted"
            ),
        ));
    }
    let mut items = Vec::with_capacity(req.access_list.len());
    for (i, item) in req.access_list.iter().enumerate() {
        let address = parse_address(&item.address)
            .map_err(|r| invalid(FIELD, format!("item {i}: address {r}")))?;
        let storage_keys = item
            .storage_keys
            .iter()
            .enumerate()
            .map(|(j, k)| {
                parse_b256(k)
                    .map_err(|r| invalid(FIELD, format!("item {i}: storage_keys[{j}] {r}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        items.push(AccessListItem {
            address,
            storage_keys,
        });
    }
    Ok(AccessList(items))
}

/// Validates the request fields and builds the transaction.
///
/// Errors name the proto field. Nothing is defaulted except `value` (empty means zero, as
/// the proto documents) and an empty `to` (contract creation).
pub fn prepare_transaction(req: &SignEvmTransactionRequest) -> Result<PreparedTx, EvmError> {
    let ty = tx_type(req.r#type)?;

    if req.chain_id == 0 {
        return Err(invalid(
            "chain_id",
            "is required and must be greater than 0 (EIP-155 replay protection)",
        ));
    }
    if req.chain_id > MAX_CHAIN_ID {
        return Err(invalid(
            "chain_id",
            format!(
                "{} exceeds the largest chain id accepted, {MAX_CHAIN_ID} (EIP-2294)",
                req.chain_id
            ),
        ));
    }
    if req.nonce == u64::MAX {
        return Err(invalid("nonce", "2^64 - 1 is not a valid nonce (EIP-2681)"));
    }
    if req.gas_limit == 0 {
        return Err(invalid("gas_limit", "must be greater than 0"));
    }

    let to = if req.to.is_empty() {
        None
    } else {
        Some(parse_address(&req.to).map_err(|r| invalid("to", r))?)
    };
    let value = if req.value.is_empty() {
        U256::ZERO
    } else {
        parse_u256(&req.value).map_err(|r| invalid("value", r))?
    };
    match to {
        Some(_) if req.data.len() > MAX_CALLDATA_BYTES => {
            return Err(invalid(
                "data",
                format!(
                    "calldata is {} bytes; at most {MAX_CALLDATA_BYTES} accepted",
                    req.data.len()
                ),
            ));
        }
        None if req.data.len() > MAX_INIT_CODE_BYTES => {
            return Err(invalid(
                "data",
                format!(
                    "init code is {} bytes; at most {MAX_INIT_CODE_BYTES} accepted",
                    req.data.len()
                ),
            ));
        }
        // A missing `to` with no init code would create an empty account and strand its
        // value forever; far more likely a caller forgot `to`.
        None if req.data.is_empty() => {
            return Err(invalid(
                "data",
                "contract creation (empty `to`) needs init code; set `to` for a transfer",
            ));
        }
        _ => {}
    }

    let kind = to.map_or(TxKind::Create, TxKind::Call);
    let input = Bytes::copy_from_slice(&req.data);
    let tx = match ty {
        TxType::Legacy => {
            forbidden(
                "max_fee_per_gas",
                !req.max_fee_per_gas.is_empty(),
                ty,
                "set gas_price",
            )?;
            forbidden(
                "max_priority_fee_per_gas",
                !req.max_priority_fee_per_gas.is_empty(),
                ty,
                "set gas_price",
            )?;
            forbidden(
                "access_list",
                !req.access_list.is_empty(),
                ty,
                "use EIP-2930 or EIP-1559 for an access list",
            )?;
            let gas_price = required_fee("gas_price", &req.gas_price, ty)?;
            Tx::Legacy(TxLegacy {
                chain_id: Some(req.chain_id),
                nonce: req.nonce,
                gas_price,
                gas_limit: req.gas_limit,
                to: kind,
                value,
                input,
            })
        }
        TxType::Eip2930 => {
            forbidden(
                "max_fee_per_gas",
                !req.max_fee_per_gas.is_empty(),
                ty,
                "set gas_price",
            )?;
            forbidden(
                "max_priority_fee_per_gas",
                !req.max_priority_fee_per_gas.is_empty(),
                ty,
                "set gas_price",
            )?;
            let gas_price = required_fee("gas_price", &req.gas_price, ty)?;
            let access_list = access_list(req)?;
            Tx::Eip2930(TxEip2930 {
                chain_id: req.chain_id,
                nonce: req.nonce,
                gas_price,
                gas_limit: req.gas_limit,
                to: kind,
                value,
                access_list,
                input,
            })
        }
        TxType::Eip1559 => {
            forbidden(
                "gas_price",
                !req.gas_price.is_empty(),
                ty,
                "set max_fee_per_gas and max_priority_fee_per_gas",
            )?;
            let max_fee_per_gas = required_fee("max_fee_per_gas", &req.max_fee_per_gas, ty)?;
            let max_priority_fee_per_gas = required_fee(
                "max_priority_fee_per_gas",
                &req.max_priority_fee_per_gas,
                ty,
            )?;
            if max_priority_fee_per_gas > max_fee_per_gas {
                return Err(invalid(
                    "max_priority_fee_per_gas",
                    format!(
                        "{max_priority_fee_per_gas} is greater than max_fee_per_gas {max_fee_per_gas}"
                    ),
                ));
            }
            let access_list = access_list(req)?;
            Tx::Eip1559(TxEip1559 {
                chain_id: req.chain_id,
                nonce: req.nonce,
                gas_limit: req.gas_limit,
                max_fee_per_gas,
                max_priority_fee_per_gas,
                to: kind,
                value,
                access_list,
                input,
            })
        }
    };

    let signing_hash = match &tx {
        Tx::Legacy(t) => t.signature_hash(),
        Tx::Eip2930(t) => t.signature_hash(),
        Tx::Eip1559(t) => t.signature_hash(),
    };
    let mut action = tx_action(&req.key_id, req.chain_id, to, value, &req.data);
    action.gas_limit = Some(req.gas_limit);
    // The most the sender may pay per gas: gas_price, or max_fee_per_gas for EIP-1559.
    action.max_fee_per_gas = Some(U256::from(match &tx {
        Tx::Legacy(t) => t.gas_price,
        Tx::Eip2930(t) => t.gas_price,
        Tx::Eip1559(t) => t.max_fee_per_gas,
    }));
    Ok(PreparedTx {
        tx,
        signing_hash,
        action,
    })
}

/// Decodes `data` as `C` only if it is exactly `C`'s canonical ABI encoding: right selector,
/// right length, clean padding. Anything looser could be read differently by the token
/// contract than by the policy.
fn decode_exact<C: SolCall>(data: &[u8]) -> Option<C> {
    let call = C::abi_decode_validate(data).ok()?;
    (call.abi_encode() == data).then_some(call)
}

/// Classifies a transaction for the policy.
fn tx_action(key_id: &str, chain_id: u64, to: Option<Address>, value: U256, data: &[u8]) -> Action {
    let mut action = Action::new(key_id, Kind::ContractCall);
    action.chain_id = Some(chain_id);
    action.to = to;
    action.value = value;
    let Some(token) = to else {
        // Init code is not calldata: its first bytes are opcodes, not a selector.
        action.kind = Kind::ContractCreation;
        return action;
    };
    if data.is_empty() {
        action.kind = Kind::NativeTransfer;
        return action;
    }
    let (selector, decoded) = decode_call(token, data);
    action.selector = selector;
    // For argument matchers; at most MAX_CALLDATA_BYTES, checked when the request was read.
    action.calldata = Some(data.to_vec().into());
    if let Some((kind, erc)) = decoded {
        action.kind = kind;
        action.erc20 = Some(erc);
    }
    action
}

/// The selector of calldata `data` sent to `token`, and its decoded ERC-20 call when `data`
/// is exactly the canonical encoding of `transfer`, `transferFrom` or `approve`.
pub(super) fn decode_call(
    token: Address,
    data: &[u8],
) -> (Option<[u8; 4]>, Option<(Kind, Erc20Call)>) {
    let selector = data.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok());
    let decoded = match selector {
        Some(erc20::transferCall::SELECTOR) => decode_exact::<erc20::transferCall>(data).map(|c| {
            let erc = Erc20Call {
                token,
                from: None,
                counterparty: c.to,
                amount: c.amount,
            };
            (Kind::Erc20Transfer, erc)
        }),
        Some(erc20::transferFromCall::SELECTOR) => decode_exact::<erc20::transferFromCall>(data)
            .map(|c| {
                let erc = Erc20Call {
                    token,
                    from: Some(c.from),
                    counterparty: c.to,
                    amount: c.amount,
                };
                (Kind::Erc20TransferFrom, erc)
            }),
        Some(erc20::approveCall::SELECTOR) => decode_exact::<erc20::approveCall>(data).map(|c| {
            let erc = Erc20Call {
                token,
                from: None,
                counterparty: c.spender,
                amount: c.amount,
            };
            (Kind::Erc20Approve, erc)
        }),
        _ => None,
    };
    (selector, decoded)
}
