//! EVM encodings: transactions (legacy with EIP-155, EIP-2930, EIP-1559), EIP-191 messages and
//! EIP-712 typed data, turned into the exact hash to sign and the decoded [`Action`] the policy
//! judges. Encoding and hashing are alloy's; this module validates input and maps fields.
//!
//! It never signs and never holds keys. Every input is bounded and validated; anything it
//! cannot decode exactly is refused (or, for calldata, classified as an arbitrary contract
//! call), so the policy never judges something other than what would be signed.
//!
//! [`Action`]: signerd_policy::Action

use alloy_primitives::Address;

mod fields;
mod message;
mod tx;
mod typed_data;

#[cfg(test)]
mod tests;

pub use message::{MAX_MESSAGE_BYTES, prepare_message};
pub use tx::{
    MAX_ACCESS_LIST_ITEMS, MAX_ACCESS_LIST_STORAGE_KEYS, MAX_CALLDATA_BYTES, MAX_CHAIN_ID,
    MAX_INIT_CODE_BYTES, PreparedTx, SignedTx, prepare_transaction,
};
pub use typed_data::{
    MAX_ENCODED_TYPES_BYTES, MAX_ENCODED_VALUES, MAX_TYPED_DATA_JSON_BYTES, MAX_TYPED_DATA_MEMBERS,
    MAX_TYPED_DATA_TYPES, prepare_typed_data,
};

/// A request field that is missing, malformed or not supported. Always the caller's fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvmError {
    /// A field is malformed; the message says which and why.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The request field, as named in the proto.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A transaction type or feature signerd refuses to sign.
    #[error("{0}")]
    Unsupported(String),
}

/// The EVM address of a secp256k1 public key (compressed or uncompressed SEC1): the last 20
/// bytes of keccak256 of the uncompressed point without its `0x04` tag.
///
/// Refuses anything that is not a valid point on the curve (including the identity).
pub fn address_of(public_key: &[u8]) -> Result<Address, EvmError> {
    let key = k256::PublicKey::from_sec1_bytes(public_key).map_err(|_| EvmError::InvalidField {
        field: "public_key",
        reason: format!(
            "{} bytes that are not a valid secp256k1 SEC1 point (33 bytes compressed or 65 uncompressed)",
            public_key.len()
        ),
    })?;
    Ok(crate::keys::hazmat::evm_address(&key.into()))
}
