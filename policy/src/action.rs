//! The canonical, decoded description of what a signing request would authorize.
//!
//! The daemon decodes every request (transaction fields, calldata, typed data) into an
//! [`Action`] before the policy sees it; the policy never parses wire formats itself.

use alloy_primitives::{Address, U256};
use serde::{Deserialize, Serialize};

/// What kind of signature a request asks for, as policy rules name it.
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
    /// An EIP-191 `personal_sign` message.
    Eip191Message,
    /// EIP-712 typed data.
    Eip712TypedData,
    /// A raw 32-byte digest (blind signing).
    RawDigest,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 9] = [
        Kind::NativeTransfer,
        Kind::Erc20Transfer,
        Kind::Erc20TransferFrom,
        Kind::Erc20Approve,
        Kind::ContractCall,
        Kind::ContractCreation,
        Kind::Eip191Message,
        Kind::Eip712TypedData,
        Kind::RawDigest,
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
    /// `message.spender` when `primaryType` is `Permit` (EIP-2612) and it decoded as an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spender: Option<Address>,
    /// `message.value` when `primaryType` is `Permit` (EIP-2612) and it decoded as a uint256:
    /// the allowance granted, in the token's base units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permit_value: Option<U256>,
}

/// Everything the policy may look at about one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The key asked to sign.
    pub key: String,
    /// What is being signed.
    pub kind: Kind,
    /// Chain id of a transaction (always present for transactions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// Transaction destination; `None` for contract creation and non-transactions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Address>,
    /// Native value in wei (zero for non-transactions).
    pub value: U256,
    /// First four bytes of calldata, when there are at least four.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_hex4")]
    pub selector: Option<[u8; 4]>,
    /// Decoded ERC-20 arguments for the ERC-20 kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erc20: Option<Erc20Call>,
    /// Decoded typed-data facts for [`Kind::Eip712TypedData`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typed_data: Option<TypedDataFacts>,
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
            erc20: None,
            typed_data: None,
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
