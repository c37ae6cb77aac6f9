//! The canonical, decoded description of what a signing request would authorize.
//!
//! The daemon decodes every request (transaction fields, calldata, typed data) into an
//! [`Action`] before the policy sees it; the policy never parses wire formats itself.

use alloy_primitives::{Address, Bytes, U256};
use serde::{Deserialize, Serialize};

/// What kind of signature a request asks for, as policy rules name it.
///
/// Kinds that could be a hash or an authorization the daemon cannot read (`raw_digest`,
/// `eip191_binary`, opaque `eip712_typed_data`) are covered only by rules whose `kinds` name
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A transaction with a destination and no calldata.
    NativeTransfer,
    /// A call of ERC-20 `transfer(address,uint256)`.
    Erc20Transfer,
    /// A call of ERC-20 `transferFrom(address,address,uint256)`.
    Erc20TransferFrom,
    /// A call of ERC-20 `approve(address,uint256)`.
    Erc20Approve,
    /// Any other transaction with a destination and calldata.
    ContractCall,
    /// A transaction without a destination.
    ContractCreation,
    /// An EIP-191 `personal_sign` message that is UTF-8 text and not exactly 32 bytes long.
    Eip191Message,
    /// EIP-712 typed data that is none of the recognized standards below (opaque).
    Eip712TypedData,
    /// A raw 32-byte digest (blind signing).
    RawDigest,
    /// An EIP-191 `personal_sign` message of exactly 32 bytes, or one that is not UTF-8: it
    /// may be the hash of something else (an EIP-712 hash, a Safe transaction hash), so it is
    /// as blind as a raw digest.
    Eip191Binary,
    /// EIP-712 token permits: EIP-2612 `Permit`, DAI's `Permit`, and Permit2's
    /// `PermitSingle`, `PermitBatch`, `PermitTransferFrom` and `PermitBatchTransferFrom`.
    Eip712Permit,
    /// EIP-3009 `TransferWithAuthorization` and `ReceiveWithAuthorization`.
    Eip712TransferAuthorization,
    /// A Safe (Gnosis Safe) `SafeTx`: an owner's approval of a transaction from the Safe.
    Eip712SafeTx,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 13] = [
        Kind::NativeTransfer,
        Kind::Erc20Transfer,
        Kind::Erc20TransferFrom,
        Kind::Erc20Approve,
        Kind::ContractCall,
        Kind::ContractCreation,
        Kind::Eip191Message,
        Kind::Eip712TypedData,
        Kind::RawDigest,
        Kind::Eip191Binary,
        Kind::Eip712Permit,
        Kind::Eip712TransferAuthorization,
        Kind::Eip712SafeTx,
    ];

    /// This kind's bit in a [`crate::rule::KindSet`].
    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Position in [`Kind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The name used in policy files and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NativeTransfer => "native_transfer",
            Kind::Erc20Transfer => "erc20_transfer",
            Kind::Erc20TransferFrom => "erc20_transfer_from",
            Kind::Erc20Approve => "erc20_approve",
            Kind::ContractCall => "contract_call",
            Kind::ContractCreation => "contract_creation",
            Kind::Eip191Message => "eip191_message",
            Kind::Eip712TypedData => "eip712_typed_data",
            Kind::RawDigest => "raw_digest",
            Kind::Eip191Binary => "eip191_binary",
            Kind::Eip712Permit => "eip712_permit",
            Kind::Eip712TransferAuthorization => "eip712_transfer_authorization",
            Kind::Eip712SafeTx => "eip712_safe_tx",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded ERC-20 call arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erc20Call {
    /// The token contract (the transaction's destination).
    pub token: Address,
    /// `transferFrom` only: the account debited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Address>,
    /// Recipient (`transfer`, `transferFrom`) or spender (`approve`).
    pub counterparty: Address,
    /// Amount in the token's base units.
    pub amount: U256,
}

/// The EIP-712 standard that typed data was recognized as, from its full type structure and
/// its domain (never from the primary type's name alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypedStandard {
    /// EIP-2612 `Permit(owner, spender, value, nonce, deadline)` of the `verifyingContract` token.
    Eip2612Permit,
    /// DAI's `Permit(holder, spender, nonce, expiry, allowed)`: `allowed = true` grants an
    /// unlimited allowance.
    DaiPermit,
    /// Permit2 `PermitSingle`: an allowance of one token for a spender, through Permit2.
    Permit2Single,
    /// Permit2 `PermitBatch`: allowances of several tokens for one spender.
    Permit2Batch,
    /// Permit2 `PermitTransferFrom`: a one-time transfer of one token by the spender.
    Permit2TransferFrom,
    /// Permit2 `PermitBatchTransferFrom`: a one-time transfer of several tokens.
    Permit2BatchTransferFrom,
    /// EIP-3009 `TransferWithAuthorization` of the `verifyingContract` token.
    Eip3009Transfer,
    /// EIP-3009 `ReceiveWithAuthorization` of the `verifyingContract` token.
    Eip3009Receive,
    /// A Safe `SafeTx`.
    SafeTx,
}

impl TypedStandard {
    /// The name used in audit records and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            TypedStandard::Eip2612Permit => "eip2612_permit",
            TypedStandard::DaiPermit => "dai_permit",
            TypedStandard::Permit2Single => "permit2_single",
            TypedStandard::Permit2Batch => "permit2_batch",
            TypedStandard::Permit2TransferFrom => "permit2_transfer_from",
            TypedStandard::Permit2BatchTransferFrom => "permit2_batch_transfer_from",
            TypedStandard::Eip3009Transfer => "eip3009_transfer",
            TypedStandard::Eip3009Receive => "eip3009_receive",
            TypedStandard::SafeTx => "safe_tx",
        }
    }

    /// The request kind typed data of this standard has.
    pub fn kind(self) -> Kind {
        match self {
            TypedStandard::Eip2612Permit
            | TypedStandard::DaiPermit
            | TypedStandard::Permit2Single
            | TypedStandard::Permit2Batch
            | TypedStandard::Permit2TransferFrom
            | TypedStandard::Permit2BatchTransferFrom => Kind::Eip712Permit,
            TypedStandard::Eip3009Transfer | TypedStandard::Eip3009Receive => {
                Kind::Eip712TransferAuthorization
            }
            TypedStandard::SafeTx => Kind::Eip712SafeTx,
        }
    }
}

impl std::fmt::Display for TypedStandard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token movement that typed data authorizes: an allowance (permits) or a transfer
/// (Permit2 transfers, EIP-3009).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// The token contract.
    pub token: Address,
    /// Who may move the tokens (a permit's spender) or who receives them (EIP-3009 `to`).
    pub counterparty: Address,
    /// Most that may move, in the token's base units (`U256::MAX` for an unlimited DAI permit).
    pub amount: U256,
}

/// The parameters of a Safe `SafeTx` other than its call, which fills the action's `to`,
/// `value`, `selector` and `erc20` as a transaction's would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafeTxFacts {
    /// `0` for a call, `1` for a delegatecall (which runs the target's code as the Safe).
    pub operation: u8,
    /// Gas given to the call.
    pub safe_tx_gas: U256,
    /// Gas paid for outside the call.
    pub base_gas: U256,
    /// Refund price per gas paid to `refund_receiver` in `gas_token` (0: no refund).
    pub gas_price: U256,
    /// The refund's token (the zero address: the native coin).
    pub gas_token: Address,
    /// Who receives the refund (the zero address: the executor).
    pub refund_receiver: Address,
    /// The Safe's nonce.
    pub nonce: U256,
}

/// Facts decoded from EIP-712 typed data.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TypedDataFacts {
    /// `primaryType`.
    pub primary_type: String,
    /// `domain.name`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    /// `domain.chainId`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_chain_id: Option<U256>,
    /// `domain.verifyingContract`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifying_contract: Option<Address>,
    /// The standard recognized; `None` for opaque typed data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard: Option<TypedStandard>,
    /// The token movements a permit or an EIP-3009 authorization grants, in message order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<TokenGrant>,
    /// When the authorization stops being valid (seconds since the Unix epoch), for the
    /// standards that have one (permits: `deadline`, `expiry` or `sigDeadline`; EIP-3009:
    /// `validBefore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<U256>,
    /// A `SafeTx`'s parameters other than its call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_tx: Option<SafeTxFacts>,
}

/// Most bytes of a text message kept in [`MessageFacts::text_head`].
pub const MESSAGE_HEAD_BYTES: usize = 512;

/// Facts about an EIP-191 message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageFacts {
    /// The message's length in bytes.
    pub len: u64,
    /// For an `eip191_message` (UTF-8 text): its first [`MESSAGE_HEAD_BYTES`] bytes at most,
    /// cut at a character boundary. `None` for `eip191_binary`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_head: Option<String>,
}

/// Everything the policy may look at about one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The key asked to sign.
    pub key: String,
    /// What is being signed.
    pub kind: Kind,
    /// Chain id of a transaction (always present for transactions), or of a `SafeTx`
    /// (its domain's `chainId`, when present and within 64 bits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// Destination of a transaction or of a `SafeTx`'s call; `None` for contract creation
    /// and other kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Address>,
    /// Native value in wei of a transaction or of a `SafeTx`'s call (zero for other kinds).
    pub value: U256,
    /// First four bytes of calldata (a transaction's or a `SafeTx`'s), when there are at
    /// least four.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex4")]
    pub selector: Option<[u8; 4]>,
    /// The whole calldata of a transaction or of a `SafeTx`'s call (selector included), for
    /// rules with `function` and `args`; `None` for other kinds. Bounded by the daemon's
    /// request limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calldata: Option<Bytes>,
    /// The signing key's address (`self` in argument matchers), when the key has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Address>,
    /// Decoded ERC-20 arguments for the ERC-20 kinds, and for a `SafeTx` whose call is a
    /// canonical ERC-20 `transfer`, `transferFrom` or `approve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erc20: Option<Erc20Call>,
    /// Decoded typed-data facts for the EIP-712 kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typed_data: Option<TypedDataFacts>,
    /// Facts about an EIP-191 message, for the two EIP-191 kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageFacts>,
    /// Transaction gas limit; `None` for non-transactions or when not decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gas_limit: Option<u64>,
    /// Most the transaction may pay per gas, in wei: `max_fee_per_gas` (EIP-1559) or
    /// `gas_price` (legacy, EIP-2930); `None` for non-transactions or when not decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fee_per_gas: Option<U256>,
}

impl Action {
    /// An action of `kind` on `key` with every optional fact empty.
    pub fn new(key: impl Into<String>, kind: Kind) -> Self {
        Action {
            key: key.into(),
            kind,
            chain_id: None,
            to: None,
            value: U256::ZERO,
            selector: None,
            calldata: None,
            signer: None,
            erc20: None,
            typed_data: None,
            message: None,
            gas_limit: None,
            max_fee_per_gas: None,
        }
    }
}

mod opt_hex4 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<[u8; 4]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&format!("0x{}", hex::encode(b))),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 4]>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => {
                let raw =
                    hex::decode(s.trim_start_matches("0x")).map_err(serde::de::Error::custom)?;
                let arr: [u8; 4] = raw
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a selector is 4 bytes"))?;
                Ok(Some(arr))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The audit log records actions as this JSON, and `signerctl audit recheck` reads them
    /// back: every action must come back as it was, optional members absent or present.
    #[test]
    fn an_action_reads_back_from_its_json() {
        let mut plain = Action::new("hot", Kind::NativeTransfer);
        plain.chain_id = Some(1);
        plain.to = Some(Address::repeat_byte(0x35));
        plain.value = U256::from(1000u64);
        plain.gas_limit = Some(21_000);
        plain.max_fee_per_gas = Some(U256::ZERO);
        let mut call = plain.clone();
        call.kind = Kind::Erc20Transfer;
        call.selector = Some([0xa9, 0x05, 0x9c, 0xbb]);
        call.calldata = Some(Bytes::from(vec![0xa9, 0x05, 0x9c, 0xbb, 0x00]));
        call.signer = Some(Address::repeat_byte(0x22));
        call.erc20 = Some(Erc20Call {
            token: Address::repeat_byte(0x35),
            from: None,
            counterparty: Address::repeat_byte(0x11),
            amount: U256::from(7u64),
        });
        let mut message = Action::new("hot", Kind::Eip191Message);
        message.message = Some(MessageFacts {
            len: 5,
            text_head: Some("hello".to_owned()),
        });
        for a in [plain, call, message] {
            let json = serde_json::to_value(&a).unwrap();
            let back: Action = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back, a, "{json}");
        }
    }
}
