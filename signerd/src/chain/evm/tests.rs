//! Known-answer vectors from the standards (EIP-155, EIP-712, EIP-191), cross-checks against
//! independent implementations (libsecp256k1 for recovery, alloy's decoder for the raw
//! encoding), classification, and the precise refusal of every bad-input class.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy_consensus::TxEnvelope;
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, TxKind, U256, address, b256, hex, keccak256};
use k256::ecdsa::SigningKey;
use signerd_policy::{Kind, TokenGrant, TypedStandard};
use signerd_proto::v1::{AccessListItem, EvmTransactionType, SignEvmTransactionRequest};

use super::*;

const EIP155_KEY: [u8; 32] = [0x46; 32];
const DEST: &str = "0x3535353535353535353535353535353535353535";
const TOKEN: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const ALICE: Address = address!("0x1111111111111111111111111111111111111111");
const BOB: Address = address!("0x2222222222222222222222222222222222222222");

fn signing_key(bytes: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&bytes.into()).unwrap()
}

fn pubkey(key: &SigningKey, compressed: bool) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(compressed)
        .as_bytes()
        .to_vec()
}

/// Signs like the key backends do: k256 recoverable, low-s.
fn sign(key: &SigningKey, hash: B256) -> ([u8; 32], [u8; 32], bool) {
    let (sig, recid) = key.sign_prehash_recoverable(hash.as_slice()).unwrap();
    let bytes = sig.to_bytes();
    let mut r = [0u8; 32];
    let mut s = [0u8; 32];
    r.copy_from_slice(&bytes[..32]);
    s.copy_from_slice(&bytes[32..]);
    (r, s, recid.is_y_odd())
}

/// Recovers the signer with libsecp256k1, independently of k256 and alloy.
fn recover_secp256k1(hash: B256, r: &[u8], s: &[u8], parity: bool) -> Address {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r);
    compact[32..].copy_from_slice(s);
    let recid = RecoveryId::try_from(i32::from(parity)).unwrap();
    let sig = RecoverableSignature::from_compact(&compact, recid).unwrap();
    let pk = secp256k1::SECP256K1
        .recover_ecdsa(&secp256k1::Message::from_digest(hash.0), &sig)
        .unwrap();
    let unc = pk.serialize_uncompressed();
    Address::from_slice(&keccak256(&unc[1..])[12..])
}

fn base(ty: EvmTransactionType) -> SignEvmTransactionRequest {
    let mut req = SignEvmTransactionRequest {
        request_id: "req-1".into(),
        key_id: "hot-1".into(),
        r#type: ty as i32,
        chain_id: 1,
        nonce: 7,
        gas_limit: 21_000,
        to: DEST.into(),
        value: "1000".into(),
        ..Default::default()
    };
    match ty {
        EvmTransactionType::Eip1559 => {
            req.max_fee_per_gas = "30000000000".into();
            req.max_priority_fee_per_gas = "0x3b9aca00".into();
        }
        _ => req.gas_price = "20000000000".into(),
    }
    req
}

fn field_err(r: Result<PreparedTx, EvmError>) -> (&'static str, String) {
    match r {
        Err(EvmError::InvalidField { field, reason }) => (field, reason),
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

fn assert_field_err(req: &SignEvmTransactionRequest, field: &str, needle: &str) {
    let (f, reason) = field_err(prepare_transaction(req));
    assert_eq!(f, field, "reason: {reason}");
    assert!(
        reason.contains(needle),
        "{field}: {reason:?} does not contain {needle:?}"
    );
}

// ---------------------------------------------------------------- known-answer vectors

/// EIP-155's worked example, from the EIP text.
#[test]
fn eip155_worked_example() {
    let req = SignEvmTransactionRequest {
        r#type: EvmTransactionType::Legacy as i32,
        key_id: "k".into(),
        chain_id: 1,
        nonce: 9,
        gas_price: "20000000000".into(),
        gas_limit: 21_000,
        to: DEST.into(),
        value: "1000000000000000000".into(),
        ..Default::default()
    };
    let tx = prepare_transaction(&req).unwrap();
    assert_eq!(
        tx.signing_hash(),
        b256!("0xdaf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53")
    );
    let key = signing_key(EIP155_KEY);
    let (r, s, parity) = sign(&key, tx.signing_hash());
    let signed = tx.encode_signed(r, s, parity);
    assert_eq!(
        hex::encode_prefixed(&signed.raw),
        "0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a0\
         28ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb70330\
         4b3800ccf555c9f3dc64214b297fb1966a3b6d83"
    );
    assert_eq!(signed.v, 37);
    assert_eq!(signed.hash, keccak256(&signed.raw));
    // The same raw bytes decode back, with the EIP-155 sender.
    let env = TxEnvelope::decode_2718(&mut signed.raw.as_slice()).unwrap();
    let TxEnvelope::Legacy(decoded) = env else {
        panic!("not legacy")
    };
    assert_eq!(decoded.tx().chain_id, Some(1));
    assert_eq!(*decoded.hash(), signed.hash);
    let sender = recover_secp256k1(tx.signing_hash(), &r, &s, parity);
    assert_eq!(
        sender,
        address!("0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F")
    );
    assert_eq!(sender, address_of(&pubkey(&key, true)).unwrap());
}

/// EIP-712's `Mail` example, from the EIP text.
const MAIL: &str = r#"{
  "types": {
    "EIP712Domain": [
      {"name": "name", "type": "string"},
      {"name": "version", "type": "string"},
      {"name": "chainId", "type": "uint256"},
      {"name": "verifyingContract", "type": "address"}
    ],
    "Person": [
      {"name": "name", "type": "string"},
      {"name": "wallet", "type": "address"}
    ],
    "Mail": [
      {"name": "from", "type": "Person"},
      {"name": "to", "type": "Person"},
      {"name": "contents", "type": "string"}
    ]
  },
  "primaryType": "Mail",
  "domain": {
    "name": "Ether Mail",
    "version": "1",
    "chainId": 1,
    "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"
  },
  "message": {
    "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
    "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
    "contents": "Hello, Bob!"
  }
}"#;

const MAIL_DIGEST: B256 =
    b256!("0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2");

#[test]
fn eip712_mail_example() {
    let (hash, action) = prepare_typed_data("k", MAIL).unwrap();
    assert_eq!(hash, MAIL_DIGEST);
    assert_eq!(action.kind, Kind::Eip712TypedData);
    assert_eq!(action.key, "k");
    let facts = action.typed_data.unwrap();
    assert_eq!(facts.primary_type, "Mail");
    assert_eq!(facts.domain_name.as_deref(), Some("Ether Mail"));
    assert_eq!(facts.domain_chain_id, Some(U256::from(1u8)));
    assert_eq!(
        facts.verifying_contract,
        Some(address!("0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"))
    );
}

#[test]
fn eip712_chain_id_as_string_hashes_the_same() {
    for chain in ["\"1\"", "\"0x1\""] {
        let json = MAIL.replace("\"chainId\": 1", &format!("\"chainId\": {chain}"));
        let (hash, _) = prepare_typed_data("k", &json).unwrap();
        assert_eq!(hash, MAIL_DIGEST, "chainId {chain}");
    }
}

#[test]
fn eip191_hello_world() {
    let (hash, action) = prepare_message("k", b"hello world").unwrap();
    assert_eq!(
        hash,
        b256!("0xd9eba16ed0ecae432b71fe008c98cc872bb4cc214d3220a36f365326cf807d68")
    );
    assert_eq!(action.kind, Kind::Eip191Message);
    assert_eq!(action.key, "k");
    assert_eq!(action.value, U256::ZERO);
    assert!(action.to.is_none() && action.chain_id.is_none());
}

#[test]
fn eip191_empty_and_size_bound() {
    let (hash, _) = prepare_message("k", b"").unwrap();
    assert_eq!(hash, keccak256(b"\x19Ethereum Signed Message:\n0"));
    let max = vec![0xffu8; MAX_MESSAGE_BYTES];
    let mut prefixed = format!("\x19Ethereum Signed Message:\n{MAX_MESSAGE_BYTES}").into_bytes();
    prefixed.extend_from_slice(&max);
    assert_eq!(prepare_message("k", &max).unwrap().0, keccak256(&prefixed));
    let err = prepare_message("k", &vec![0u8; MAX_MESSAGE_BYTES + 1]).unwrap_err();
    assert_eq!(
        err,
        EvmError::InvalidField {
            field: "message",
            reason: format!("is 65537 bytes; at most {MAX_MESSAGE_BYTES} accepted")
        }
    );
}

#[test]
fn address_of_known_keys() {
    // Private key 1: its address is well known.
    let mut one = [0u8; 32];
    one[31] = 1;
    let key = signing_key(one);
    let expected = address!("0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
    assert_eq!(address_of(&pubkey(&key, true)).unwrap(), expected);
    assert_eq!(address_of(&pubkey(&key, false)).unwrap(), expected);
    // x = 2^256 - 1 is not a field element.
    let mut x_too_big = vec![0xffu8; 33];
    x_too_big[0] = 0x02;
    // A valid compressed key with its tag changed to uncompressed, length unchanged.
    let mut wrong_tag = pubkey(&key, true);
    wrong_tag[0] = 0x04;
    // A valid uncompressed key with y flipped off the curve.
    let mut off_curve = pubkey(&key, false);
    off_curve[64] ^= 1;
    for bad in [
        vec![],
        vec![0u8; 33],
        x_too_big,
        wrong_tag,
        off_curve,
        vec![4u8; 65],
        vec![0u8; 64],
        vec![0u8],
    ] {
        let err = address_of(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                EvmError::InvalidField {
                    field: "public_key",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

// ------------------------------------------------ typed transactions, cross-checked

fn access_list_req() -> Vec<AccessListItem> {
    vec![
        AccessListItem {
            address: TOKEN.into(),
            storage_keys: vec![
                format!("0x{}", "00".repeat(32)),
                "0x290decd9548b62a8d60345a988386fc84ba6bc95484008f6362f93160ef3e563".into(),
            ],
        },
        AccessListItem {
            address: DEST.into(),
            storage_keys: vec![],
        },
    ]
}

/// Signs with k256, recovers with libsecp256k1, decodes the raw bytes with alloy and checks
/// every field survived.
fn sign_and_cross_check(req: &SignEvmTransactionRequest, key: &SigningKey) -> TxEnvelope {
    let tx = prepare_transaction(req).unwrap();
    let (r, s, parity) = sign(key, tx.signing_hash());
    let signed = tx.encode_signed(r, s, parity);
    let me = address_of(&pubkey(key, false)).unwrap();
    assert_eq!(recover_secp256k1(tx.signing_hash(), &r, &s, parity), me);
    assert_eq!(signed.hash, keccak256(&signed.raw));
    assert_eq!(signed.v, u64::from(parity));

    let mut buf = signed.raw.as_slice();
    let env = TxEnvelope::decode_2718(&mut buf).unwrap();
    assert!(buf.is_empty(), "trailing bytes after the transaction");
    assert_eq!(env.signature_hash(), tx.signing_hash());
    assert_eq!(*env.tx_hash(), signed.hash);
    let sig = env.signature();
    assert_eq!(sig.r(), U256::from_be_bytes(r));
    assert_eq!(sig.s(), U256::from_be_bytes(s));
    assert_eq!(sig.v(), parity);
    let r2: [u8; 32] = sig.r().to_be_bytes();
    let s2: [u8; 32] = sig.s().to_be_bytes();
    assert_eq!(
        recover_secp256k1(env.signature_hash(), &r2, &s2, sig.v()),
        me
    );
    env
}

#[test]
fn eip1559_signs_recovers_and_decodes() {
    let key = signing_key([0x11; 32]);
    let mut req = base(EvmTransactionType::Eip1559);
    req.chain_id = 10;
    req.nonce = 42;
    req.gas_limit = 90_000;
    req.to = TOKEN.into();
    req.value = "0xde0b6b3a7640000".into();
    req.data = hex::decode("deadbeef0102").unwrap();
    req.access_list = access_list_req();
    let env = sign_and_cross_check(&req, &key);
    let raw_type = env.tx_type() as u8;
    assert_eq!(raw_type, 2);
    let TxEnvelope::Eip1559(signed) = env else {
        panic!("not EIP-1559")
    };
    let t = signed.tx();
    assert_eq!(t.chain_id, 10);
    assert_eq!(t.nonce, 42);
    assert_eq!(t.gas_limit, 90_000);
    assert_eq!(t.max_fee_per_gas, 30_000_000_000);
    assert_eq!(t.max_priority_fee_per_gas, 1_000_000_000);
    assert_eq!(t.to, TxKind::Call(TOKEN.parse().unwrap()));
    assert_eq!(t.value, U256::from(1_000_000_000_000_000_000u64));
    assert_eq!(t.input.as_ref(), req.data.as_slice());
    assert_eq!(t.access_list.0.len(), 2);
    assert_eq!(
        t.access_list.0[0].address,
        TOKEN.parse::<Address>().unwrap()
    );
    assert_eq!(t.access_list.0[0].storage_keys[0], B256::ZERO);
    assert_eq!(
        t.access_list.0[0].storage_keys[1],
        b256!("0x290decd9548b62a8d60345a988386fc84ba6bc95484008f6362f93160ef3e563")
    );
    assert!(t.access_list.0[1].storage_keys.is_empty());
}

#[test]
fn eip2930_signs_recovers_and_decodes() {
    let key = signing_key([0x22; 32]);
    let mut req = base(EvmTransactionType::Eip2930);
    req.chain_id = 137;
    req.access_list = access_list_req();
    let env = sign_and_cross_check(&req, &key);
    let TxEnvelope::Eip2930(signed) = env else {
        panic!("not EIP-2930")
    };
    let t = signed.tx();
    assert_eq!(t.chain_id, 137);
    assert_eq!(t.nonce, 7);
    assert_eq!(t.gas_price, 20_000_000_000);
    assert_eq!(t.gas_limit, 21_000);
    assert_eq!(t.to, TxKind::Call(DEST.parse().unwrap()));
    assert_eq!(t.value, U256::from(1000u64));
    assert!(t.input.is_empty());
    assert_eq!(t.access_list.0.len(), 2);
}

#[test]
fn legacy_other_chain_v_and_contract_creation_decode() {
    let key = signing_key([0x33; 32]);
    let mut req = base(EvmTransactionType::Legacy);
    req.chain_id = 11_155_111;
    req.to.clear();
    req.data = vec![0x60, 0x80, 0x60, 0x40, 0x52];
    req.gas_limit = 100_000;
    let tx = prepare_transaction(&req).unwrap();
    let (r, s, parity) = sign(&key, tx.signing_hash());
    let signed = tx.encode_signed(r, s, parity);
    assert_eq!(signed.v, 11_155_111 * 2 + 35 + u64::from(parity));
    let env = TxEnvelope::decode_2718(&mut signed.raw.as_slice()).unwrap();
    assert_eq!(env.signature_hash(), tx.signing_hash());
    let TxEnvelope::Legacy(decoded) = env else {
        panic!("not legacy")
    };
    assert_eq!(decoded.tx().to, TxKind::Create);
    assert_eq!(decoded.tx().chain_id, Some(11_155_111));
    assert_eq!(
        recover_secp256k1(tx.signing_hash(), &r, &s, parity),
        address_of(&pubkey(&key, true)).unwrap()
    );
}

#[test]
fn largest_chain_id_encodes_v_without_overflow() {
    let mut req = base(EvmTransactionType::Legacy);
    req.chain_id = MAX_CHAIN_ID;
    let tx = prepare_transaction(&req).unwrap();
    let (r, s, parity) = sign(&signing_key([0x44; 32]), tx.signing_hash());
    let signed = tx.encode_signed(r, s, parity);
    assert_eq!(
        u128::from(signed.v),
        u128::from(MAX_CHAIN_ID) * 2 + 35 + u128::from(parity)
    );
    let env = TxEnvelope::decode_2718(&mut signed.raw.as_slice()).unwrap();
    assert_eq!(env.signature_hash(), tx.signing_hash());
}

// ------------------------------------------------------------------ classification

fn word_addr(a: Address) -> String {
    format!("{}{}", "00".repeat(12), hex::encode(a))
}

fn word_u256(v: U256) -> String {
    hex::encode(v.to_be_bytes::<32>())
}

fn call(selector: &str, words: &[String]) -> Vec<u8> {
    hex::decode(format!("{selector}{}", words.concat())).unwrap()
}

fn classify(to: &str, data: Vec<u8>) -> signerd_policy::Action {
    let mut req = base(EvmTransactionType::Eip1559);
    req.to = to.into();
    req.data = data;
    prepare_transaction(&req).unwrap().action().clone()
}

#[test]
fn classifies_native_transfer() {
    let a = classify(DEST, vec![]);
    assert_eq!(a.kind, Kind::NativeTransfer);
    assert_eq!(a.key, "hot-1");
    assert_eq!(a.chain_id, Some(1));
    assert_eq!(a.to, Some(DEST.parse().unwrap()));
    assert_eq!(a.value, U256::from(1000u64));
    assert!(a.selector.is_none() && a.erc20.is_none() && a.typed_data.is_none());
    assert!(a.calldata.is_none());
}

/// Every call carries its whole calldata for the policy's argument matchers, decoded or not.
#[test]
fn a_call_carries_its_calldata() {
    let data = call("414bf389", &[word_addr(BOB), word_u256(U256::from(7u64))]);
    let a = classify(DEST, data.clone());
    assert_eq!(a.kind, Kind::ContractCall);
    assert_eq!(a.calldata.as_ref().map(|c| c.to_vec()), Some(data));
    let transfer = call("a9059cbb", &[word_addr(BOB), word_u256(U256::from(5u64))]);
    let a = classify(TOKEN, transfer.clone());
    assert_eq!(a.kind, Kind::Erc20Transfer);
    assert_eq!(a.calldata.as_ref().map(|c| c.to_vec()), Some(transfer));
    // Init code is not calldata.
    let mut req = base(EvmTransactionType::Eip1559);
    req.to = String::new();
    req.data = vec![0x60, 0x00];
    let a = prepare_transaction(&req).unwrap().action().clone();
    assert_eq!(a.kind, Kind::ContractCreation);
    assert!(a.calldata.is_none());
}

#[test]
fn classifies_erc20_transfer() {
    let amount = U256::from(2_500_000_000u64);
    let a = classify(
        TOKEN,
        call("a9059cbb", &[word_addr(BOB), word_u256(amount)]),
    );
    assert_eq!(a.kind, Kind::Erc20Transfer);
    assert_eq!(a.selector, Some([0xa9, 0x05, 0x9c, 0xbb]));
    let erc = a.erc20.unwrap();
    assert_eq!(erc.token, TOKEN.parse::<Address>().unwrap());
    assert_eq!(erc.counterparty, BOB);
    assert_eq!(erc.amount, amount);
    assert_eq!(erc.from, None);
}

#[test]
fn classifies_erc20_transfer_from() {
    let a = classify(
        TOKEN,
        call(
            "23b872dd",
            &[word_addr(ALICE), word_addr(BOB), word_u256(U256::MAX)],
        ),
    );
    assert_eq!(a.kind, Kind::Erc20TransferFrom);
    assert_eq!(a.selector, Some([0x23, 0xb8, 0x72, 0xdd]));
    let erc = a.erc20.unwrap();
    assert_eq!(erc.from, Some(ALICE));
    assert_eq!(erc.counterparty, BOB);
    assert_eq!(erc.amount, U256::MAX);
}

#[test]
fn classifies_erc20_approve() {
    let a = classify(
        TOKEN,
        call("095ea7b3", &[word_addr(BOB), word_u256(U256::from(5u8))]),
    );
    assert_eq!(a.kind, Kind::Erc20Approve);
    assert_eq!(a.selector, Some([0x09, 0x5e, 0xa7, 0xb3]));
    let erc = a.erc20.unwrap();
    assert_eq!(erc.counterparty, BOB);
    assert_eq!(erc.amount, U256::from(5u8));
    assert_eq!(erc.token, TOKEN.parse::<Address>().unwrap());
}

#[test]
fn classifies_other_calls_and_creation() {
    let a = classify(TOKEN, hex::decode("70a08231").unwrap());
    assert_eq!(a.kind, Kind::ContractCall);
    assert_eq!(a.selector, Some([0x70, 0xa0, 0x82, 0x31]));
    assert!(a.erc20.is_none());

    let a = classify(TOKEN, vec![0xa9, 0x05]);
    assert_eq!(a.kind, Kind::ContractCall);
    assert_eq!(a.selector, None);

    let a = classify("", vec![0x60, 0x80, 0x60, 0x40]);
    assert_eq!(a.kind, Kind::ContractCreation);
    assert_eq!(a.to, None);
    assert_eq!(a.selector, None);
    assert_eq!(a.chain_id, Some(1));
}

#[test]
fn malformed_erc20_calldata_is_a_contract_call() {
    let good = call("a9059cbb", &[word_addr(BOB), word_u256(U256::from(1u8))]);
    let mut longer = good.clone();
    longer.push(0);
    let mut extra_word = good.clone();
    extra_word.extend_from_slice(&[0u8; 32]);
    let shorter = good[..good.len() - 1].to_vec();
    let selector_only = good[..4].to_vec();
    // An address word with dirty high bytes: some token contracts would truncate it.
    let dirty = call(
        "a9059cbb",
        &[
            format!("ff{}", &word_addr(BOB)[2..]),
            word_u256(U256::from(1u8)),
        ],
    );
    let approve_short = call("095ea7b3", &[word_addr(BOB)]);
    let transfer_from_short = call("23b872dd", &[word_addr(ALICE), word_addr(BOB)]);
    for data in [
        longer,
        extra_word,
        shorter,
        selector_only,
        dirty,
        approve_short,
        transfer_from_short,
    ] {
        let a = classify(TOKEN, data.clone());
        assert_eq!(a.kind, Kind::ContractCall, "data {}", hex::encode(&data));
        assert!(a.erc20.is_none());
        assert_eq!(a.selector.map(|s| s.to_vec()), Some(data[..4].to_vec()));
    }
}

// ------------------------------------------------------------------ refusals

#[test]
fn unsupported_types_are_refused() {
    for (ty, needle) in [
        (
            EvmTransactionType::Eip4844,
            "EIP-4844 blob transactions are not supported; nothing was signed",
        ),
        (
            EvmTransactionType::Eip7702,
            "EIP-7702 set-code transactions are not supported",
        ),
        (
            EvmTransactionType::Unspecified,
            "transaction type is unspecified",
        ),
    ] {
        let mut req = base(EvmTransactionType::Eip1559);
        req.r#type = ty as i32;
        match prepare_transaction(&req) {
            Err(EvmError::Unsupported(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{ty:?}: {other:?}"),
        }
    }
    let mut req = base(EvmTransactionType::Eip1559);
    req.r#type = 99;
    assert_field_err(&req, "type", "unknown transaction type 99");
    req.r#type = -1;
    assert_field_err(&req, "type", "unknown transaction type -1");
}

#[test]
fn destination_errors() {
    let mut req = base(EvmTransactionType::Eip1559);
    req.to = "0x3535".into();
    assert_field_err(&req, "to", "has 4 hex digits");
    req.to = DEST.trim_start_matches("0x").into();
    assert_field_err(&req, "to", "must start with 0x");
    req.to = "0xzz35353535353535353535353535353535353535".into();
    assert_field_err(&req, "to", "invalid character 'z' at byte 2");
    // A valid EIP-55 address with one letter's case flipped.
    req.to = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045".into();
    assert!(prepare_transaction(&req).is_ok());
    req.to = "0xd8dA6BF26964aF9D7eEd9e03E53415D37aA96045".replace("aF9", "af9");
    assert_field_err(&req, "to", "EIP-55 checksum");
    req.to = "0xD8DA6BF26964AF9D7EED9E03E53415D37AA96045".into();
    assert!(prepare_transaction(&req).is_ok());
}

#[test]
fn amount_errors() {
    let mut req = base(EvmTransactionType::Eip1559);
    req.value = "1e18".into();
    assert_field_err(&req, "value", "invalid character 'e' at byte 1");
    req.value = "-5".into();
    assert_field_err(&req, "value", "invalid character '-'");
    req.value = "0x".into();
    assert_field_err(&req, "value", "0x prefix but no hex digits");
    req.value = format!("0x1{}", "0".repeat(64));
    assert_eq!(
        prepare_transaction(&req).unwrap_err().to_string(),
        "value: does not fit in 256 bits"
    );
    req.value = String::new();
    assert_eq!(
        prepare_transaction(&req).unwrap().action().value,
        U256::ZERO
    );
    req.value = U256::MAX.to_string();
    assert_eq!(prepare_transaction(&req).unwrap().action().value, U256::MAX);

    let mut req = base(EvmTransactionType::Legacy);
    req.gas_price = String::new();
    assert_field_err(&req, "gas_price", "is required for legacy transactions");
    req.gas_price = "1 gwei".into();
    assert_field_err(&req, "gas_price", "invalid character ' ' at byte 1");
    req.gas_price = (U256::from(u128::MAX) + U256::from(1u8)).to_string();
    assert_field_err(&req, "gas_price", "does not fit in 128 bits");
    req.gas_price = U256::MAX.to_string();
    assert_field_err(&req, "gas_price", "does not fit in 128 bits");
    req.gas_price = format!("0x1{}", "0".repeat(64));
    assert_field_err(&req, "gas_price", "does not fit in 256 bits");

    let mut req = base(EvmTransactionType::Eip2930);
    req.gas_price = String::new();
    assert_field_err(&req, "gas_price", "is required for EIP-2930 transactions");

    let mut req = base(EvmTransactionType::Eip1559);
    req.max_fee_per_gas = String::new();
    assert_field_err(
        &req,
        "max_fee_per_gas",
        "is required for EIP-1559 transactions",
    );
    let mut req = base(EvmTransactionType::Eip1559);
    req.max_priority_fee_per_gas = String::new();
    assert_field_err(
        &req,
        "max_priority_fee_per_gas",
        "is required for EIP-1559 transactions",
    );
    let mut req = base(EvmTransactionType::Eip1559);
    req.max_fee_per_gas = "0x".into();
    assert_field_err(&req, "max_fee_per_gas", "no hex digits");
    let mut req = base(EvmTransactionType::Eip1559);
    req.max_priority_fee_per_gas = "30000000001".into();
    assert_field_err(
        &req,
        "max_priority_fee_per_gas",
        "30000000001 is greater than max_fee_per_gas 30000000000",
    );
    req.max_priority_fee_per_gas = "30000000000".into();
    assert!(prepare_transaction(&req).is_ok());
}

#[test]
fn fields_that_do_not_belong_to_the_type() {
    let mut req = base(EvmTransactionType::Eip1559);
    req.gas_price = "1".into();
    assert_field_err(&req, "gas_price", "is not used by EIP-1559 transactions");

    for ty in [EvmTransactionType::Legacy, EvmTransactionType::Eip2930] {
        let name = if ty == EvmTransactionType::Legacy {
            "legacy"
        } else {
            "EIP-2930"
        };
        let mut req = base(ty);
        req.max_fee_per_gas = "1".into();
        assert_field_err(
            &req,
            "max_fee_per_gas",
            &format!("is not used by {name} transactions"),
        );
        let mut req = base(ty);
        req.max_priority_fee_per_gas = "0".into();
        assert_field_err(
            &req,
            "max_priority_fee_per_gas",
            &format!("is not used by {name} transactions"),
        );
    }

    let mut req = base(EvmTransactionType::Legacy);
    req.access_list = access_list_req();
    assert_field_err(&req, "access_list", "is not used by legacy transactions");
}

#[test]
fn scalar_field_errors() {
    for ty in [
        EvmTransactionType::Legacy,
        EvmTransactionType::Eip2930,
        EvmTransactionType::Eip1559,
    ] {
        let mut req = base(ty);
        req.chain_id = 0;
        assert_field_err(&req, "chain_id", "must be greater than 0");
        req.chain_id = MAX_CHAIN_ID + 1;
        assert_field_err(&req, "chain_id", "exceeds the largest chain id accepted");
        let mut req = base(ty);
        req.gas_limit = 0;
        assert_field_err(&req, "gas_limit", "must be greater than 0");
        let mut req = base(ty);
        req.nonce = u64::MAX;
        assert_field_err(&req, "nonce", "EIP-2681");
        req.nonce = u64::MAX - 1;
        assert!(prepare_transaction(&req).is_ok());
    }
}

#[test]
fn data_size_bounds() {
    let mut req = base(EvmTransactionType::Eip1559);
    req.data = vec![0xab; MAX_CALLDATA_BYTES];
    assert!(prepare_transaction(&req).is_ok());
    req.data.push(0);
    assert_field_err(
        &req,
        "data",
        &format!("calldata is 131073 bytes; at most {MAX_CALLDATA_BYTES} accepted"),
    );

    req.to.clear();
    req.data = vec![0x60; MAX_INIT_CODE_BYTES];
    assert!(prepare_transaction(&req).is_ok());
    req.data.push(0);
    assert_field_err(&req, "data", "init code is 131073 bytes");

    req.data.clear();
    assert_field_err(
        &req,
        "data",
        "contract creation (empty `to`) needs init code",
    );
}

#[test]
fn access_list_errors() {
    let mut req = base(EvmTransactionType::Eip1559);
    req.access_list = vec![AccessListItem {
        address: "0x12".into(),
        storage_keys: vec![],
    }];
    assert_field_err(&req, "access_list", "item 0: address has 2 hex digits");

    req.access_list = access_list_req();
    req.access_list[1].storage_keys = vec!["0x01".into()];
    assert_field_err(
        &req,
        "access_list",
        "item 1: storage_keys[0] has 2 hex digits",
    );
    req.access_list[1].storage_keys = vec![format!("0x{}", "g".repeat(64))];
    assert_field_err(
        &req,
        "access_list",
        "item 1: storage_keys[0] invalid character 'g'",
    );
    req.access_list[1].storage_keys = vec!["00".repeat(32)];
    assert_field_err(&req, "access_list", "must start with 0x");

    let item = AccessListItem {
        address: DEST.into(),
        storage_keys: vec![],
    };
    req.access_list = vec![item.clone(); MAX_ACCESS_LIST_ITEMS];
    assert!(prepare_transaction(&req).is_ok());
    req.access_list.push(item);
    assert_field_err(&req, "access_list", "has 257 entries; at most 256 accepted");

    let key = format!("0x{}", "01".repeat(32));
    req.access_list = vec![AccessListItem {
        address: DEST.into(),
        storage_keys: vec![key; MAX_ACCESS_LIST_STORAGE_KEYS + 1],
    }];
    assert_field_err(&req, "access_list", "has 4097 storage keys in total");
}

// ------------------------------------------------------------------ typed-data refusals

fn typed_err(json: &str) -> String {
    match prepare_typed_data("k", json) {
        Err(EvmError::InvalidField {
            field: "typed_data_json",
            reason,
        }) => reason,
        other => panic!("expected typed_data_json error, got {other:?}"),
    }
}

fn assert_typed_err(json: &str, needle: &str) {
    let reason = typed_err(json);
    assert!(
        reason.contains(needle),
        "{reason:?} does not contain {needle:?}"
    );
}

#[test]
fn typed_data_structural_errors() {
    assert_typed_err("{", "invalid JSON");
    assert_typed_err("", "invalid JSON");
    assert_typed_err(&format!("{MAIL} x"), "invalid JSON");
    assert_typed_err("[]", "must be a JSON object");
    assert_typed_err("\"{}\"", "must be a JSON object");
    assert_typed_err(
        &MAIL.replace("\"primaryType\": \"Mail\",", ""),
        "missing top-level member \"primaryType\"",
    );
    let no_domain = MAIL.replace(
        "\"primaryType\": \"Mail\",",
        "\"primaryType\": \"Mail\", \"extra\": 1,",
    );
    assert_typed_err(&no_domain, "unknown top-level member \"extra\"");
    let v: serde_json::Value = serde_json::from_str(MAIL).unwrap();
    for missing in ["types", "domain", "message"] {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove(missing);
        assert_typed_err(
            &v.to_string(),
            &format!("missing top-level member \"{missing}\""),
        );
    }
    assert_typed_err(
        &MAIL.replace("\"primaryType\": \"Mail\"", "\"primaryType\": \"Letter\""),
        "primaryType \"Letter\" is not defined",
    );
    assert_typed_err(
        &MAIL.replace(
            "\"primaryType\": \"Mail\"",
            "\"primaryType\": \"EIP712Domain\"",
        ),
        "primaryType EIP712Domain",
    );
    assert_typed_err(
        &MAIL.replace("\"primaryType\": \"Mail\"", "\"primaryType\": 5"),
        "primaryType must be a string",
    );
    assert_typed_err(
        &MAIL.replace("\"EIP712Domain\"", "\"Domain\""),
        "types must define EIP712Domain",
    );
    assert_typed_err(
        &MAIL.replace(
            "{\"name\": \"contents\", \"type\": \"string\"}",
            "{\"name\": \"contents\"}",
        ),
        "types.Mail[2] must be an object",
    );
    assert_typed_err(
        &MAIL.replace(
            "{\"name\": \"contents\", \"type\": \"string\"}",
            "{\"name\": \"to\", \"type\": \"string\"}",
        ),
        "declares member \"to\" twice",
    );
}

#[test]
fn typed_data_duplicate_keys_refused() {
    let dup = MAIL.replace(
        "\"contents\": \"Hello, Bob!\"",
        "\"contents\": \"Hello, Bob!\", \"contents\": \"Pay Eve\"",
    );
    assert_typed_err(&dup, "duplicate key \"contents\"");
    let dup = MAIL.replace("\"chainId\": 1,", "\"chainId\": 1, \"chainId\": 5,");
    assert_typed_err(&dup, "duplicate key \"chainId\"");
}

#[test]
fn typed_data_values_must_match_types() {
    let abc = MAIL
        .replace(
            "{\"name\": \"contents\", \"type\": \"string\"}",
            "{\"name\": \"contents\", \"type\": \"uint256\"}",
        )
        .replace("\"Hello, Bob!\"", "\"abc\"");
    let reason = typed_err(&abc);
    assert!(
        reason.contains("abc") && reason.contains("uint256"),
        "{reason}"
    );
    let not_addr = MAIL.replace("0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB", "0x1234");
    assert_typed_err(
        &not_addr,
        "message.to.wallet (address): has 4 hex digits; an address has exactly 40",
    );
    let missing = MAIL.replace(",\n    \"contents\": \"Hello, Bob!\"", "");
    assert_ne!(missing, MAIL);
    assert_typed_err(
        &missing,
        "message.contents is missing; type Mail declares it",
    );
    let missing_nested = MAIL.replace("{\"name\": \"Cow\", ", "{");
    assert_typed_err(
        &missing_nested,
        "message.from.name is missing; type Person declares it",
    );
    let bad_domain = MAIL.replace("\"chainId\": 1", "\"chainId\": \"one\"");
    assert_typed_err(
        &bad_domain,
        "domain.chainId (uint256): \"one\" is not an integer",
    );
    // JSON integers beyond 64 bits are read exactly, never through a float.
    let huge_chain = MAIL.replace("\"chainId\": 1", "\"chainId\": 100000000000000000000001");
    let (_, a) = prepare_typed_data("k", &huge_chain).unwrap();
    assert_eq!(
        a.typed_data.unwrap().domain_chain_id,
        Some(U256::from(100_000_000_000_000_000_000_001u128))
    );
    let huge_value = abc.replace("\"abc\"", "100000000000000000000000");
    let json_int = prepare_typed_data("k", &huge_value).unwrap().0;
    let string_int =
        prepare_typed_data("k", &abc.replace("\"abc\"", "\"100000000000000000000000\""));
    assert_eq!(json_int, string_int.unwrap().0);
    // Floats are refused, even when whole.
    assert_typed_err(
        &abc.replace("\"abc\"", "1e3"),
        "message.contents (uint256): 1e3 is not a JSON integer",
    );
    let undefined = MAIL.replace(
        "{\"name\": \"from\", \"type\": \"Person\"}",
        "{\"name\": \"from\", \"type\": \"Persona\"}",
    );
    assert_typed_err(&undefined, "Persona");
    let bad_name = MAIL.replace("\"Person\": [", "\"Per son\": [");
    assert_typed_err(&bad_name, "type name \"Per son\" is not accepted");
}

#[test]
fn typed_data_undeclared_members_refused() {
    let extra = MAIL.replace(
        "\"contents\": \"Hello, Bob!\"",
        "\"contents\": \"Hello, Bob!\", \"amount\": \"1000000\"",
    );
    assert_typed_err(&extra, "message.\"amount\" is not a member of type Mail");
    let nested = MAIL.replace(
        "{\"name\": \"Bob\",",
        "{\"name\": \"Bob\", \"memo\": \"x\",",
    );
    assert_typed_err(
        &nested,
        "message.to.\"memo\" is not a member of type Person",
    );
    let domain = MAIL.replace("\"version\": \"1\",", "\"version\": \"1\", \"chain\": 1,");
    assert_typed_err(&domain, "domain member \"chain\" is not one of EIP-712's");
}

#[test]
fn typed_data_domain_type_must_describe_domain() {
    // Declared without version, but the domain object carries one.
    let no_version = MAIL.replace("{\"name\": \"version\", \"type\": \"string\"},", "");
    assert_typed_err(&no_version, "types.EIP712Domain declares");
    // Declared in another order than EIP-712's.
    let reordered = MAIL.replace(
        "{\"name\": \"name\", \"type\": \"string\"},\n      {\"name\": \"version\", \"type\": \"string\"},",
        "{\"name\": \"version\", \"type\": \"string\"},\n      {\"name\": \"name\", \"type\": \"string\"},",
    );
    assert_ne!(reordered, MAIL);
    assert_typed_err(&reordered, "types.EIP712Domain declares");
}

#[test]
fn typed_data_arrays_are_checked_for_undeclared_members() {
    let json = r#"{
      "types": {
        "EIP712Domain": [{"name": "name", "type": "string"}],
        "Person": [{"name": "wallet", "type": "address"}],
        "Group": [{"name": "members", "type": "Person[]"}]
      },
      "primaryType": "Group",
      "domain": {"name": "G"},
      "message": {"members": [{"wallet": "0x1111111111111111111111111111111111111111"}, {"wallet": "0x2222222222222222222222222222222222222222"WHERE}]}
    }"#;
    prepare_typed_data("k", &json.replace("WHERE", "")).unwrap();
    assert_typed_err(
        &json.replace("WHERE", ", \"x\": 1"),
        "message.members[1].\"x\" is not a member of type Person",
    );
}

#[test]
fn typed_data_bounds() {
    let big = format!("{{\"pad\": \"{}\"}}", "a".repeat(MAX_TYPED_DATA_JSON_BYTES));
    assert_typed_err(&big, "at most 262144 accepted");
    let mut types = serde_json::Map::new();
    types.insert("EIP712Domain".into(), serde_json::json!([]));
    for i in 0..MAX_TYPED_DATA_TYPES {
        types.insert(
            format!("T{i}"),
            serde_json::json!([{"name": "a", "type": "uint8"}]),
        );
    }
    let json =
        serde_json::json!({"types": types, "primaryType": "T0", "domain": {}, "message": {"a": 1}});
    assert_typed_err(&json.to_string(), "at most 64 accepted");
    let deep_type = format!("uint8{}", "[]".repeat(9));
    let json = serde_json::json!({
        "types": {"EIP712Domain": [], "T": [{"name": "a", "type": deep_type}]},
        "primaryType": "T", "domain": {}, "message": {"a": []}
    });
    assert_typed_err(
        &json.to_string(),
        "has 9 array dimensions; at most 8 accepted",
    );
    // Deep JSON nesting is refused by the parser, not by the stack.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_typed_err(&deep, "invalid JSON");
}

// ------------------------------------------------------------------ robustness

/// A tiny deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn odd_inputs_never_panic() {
    let odd_strings = [
        "",
        "0",
        "0x",
        "0X",
        "0x0",
        "-",
        "+1",
        " ",
        "\u{0}",
        "é",
        "０",
        "0x١",
        "99999999999999999999999999999999999999999999999999999999999999999999999999999999",
        "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "0x3535353535353535353535353535353535353535\u{0}",
        "0x353535353535353535353535353535353535353é",
        "NaN",
        "Infinity",
        "1.0",
        "0b101",
        "0o7",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for ty in -2..8 {
        for s in odd_strings {
            let mut req = base(EvmTransactionType::Eip1559);
            req.r#type = ty;
            req.to = s.into();
            req.value = s.into();
            req.gas_price = s.into();
            req.max_fee_per_gas = s.into();
            req.max_priority_fee_per_gas = s.into();
            req.access_list = vec![AccessListItem {
                address: s.into(),
                storage_keys: vec![s.into()],
            }];
            let _ = prepare_transaction(&req);
            for field in 0..6 {
                let mut req = base(EvmTransactionType::Eip1559);
                req.r#type = ty;
                match field {
                    0 => req.to = s.into(),
                    1 => req.value = s.into(),
                    2 => req.gas_price = s.into(),
                    3 => req.max_fee_per_gas = s.into(),
                    4 => req.max_priority_fee_per_gas = s.into(),
                    _ => {
                        req.access_list = vec![AccessListItem {
                            address: DEST.into(),
                            storage_keys: vec![s.into()],
                        }]
                    }
                }
                if let Ok(tx) = prepare_transaction(&req) {
                    let _ = tx.encode_signed([0xff; 32], [0; 32], true);
                }
            }
        }
        for _ in 0..50 {
            let mut req = base(EvmTransactionType::Legacy);
            req.r#type = ty;
            req.chain_id = rng.next();
            req.nonce = rng.next();
            req.gas_limit = rng.next();
            req.data = rng.bytes(300);
            req.to = String::from_utf8_lossy(&rng.bytes(44)).into_owned();
            if let Ok(tx) = prepare_transaction(&req) {
                let _ = tx.encode_signed([1; 32], [2; 32], false);
            }
        }
    }
    for _ in 0..300 {
        let bytes = rng.bytes(120);
        let _ = address_of(&bytes);
        let _ = prepare_message("k", &bytes);
        let _ = prepare_typed_data("k", &String::from_utf8_lossy(&bytes));
    }
    let odd_json = [
        "null",
        "1",
        "{}",
        "{\"types\":{},\"primaryType\":\"\",\"domain\":{},\"message\":{}}",
        "{\"types\":{\"EIP712Domain\":[]},\"primaryType\":\"A\",\"domain\":{},\"message\":null}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"A\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":{}}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"B\"}],\"B\":[{\"name\":\"b\",\"type\":\"A\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":{\"b\":{}}}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"A[]\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":[{\"a\":[]}]}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"]\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":1}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"[]\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":[1]}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"uint256[2]\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":[1]}}",
        "{\"types\":{\"EIP712Domain\":[],\"A\":[{\"name\":\"a\",\"type\":\"bytes\"}]},\"primaryType\":\"A\",\"domain\":{},\"message\":{\"a\":1e400}}",
    ];
    for j in odd_json {
        let _ = prepare_typed_data("k", j);
    }
}

pub(crate) const PERMIT: &str = r#"{
  "types": {
    "EIP712Domain": [
      {"name": "name", "type": "string"},
      {"name": "version", "type": "string"},
      {"name": "chainId", "type": "uint256"},
      {"name": "verifyingContract", "type": "address"}
    ],
    "Permit": [
      {"name": "owner", "type": "address"},
      {"name": "spender", "type": "address"},
      {"name": "value", "type": "uint256"},
      {"name": "nonce", "type": "uint256"},
      {"name": "deadline", "type": "uint256"}
    ]
  },
  "primaryType": "Permit",
  "domain": {"name": "USD Coin", "version": "2", "chainId": 1,
             "verifyingContract": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"},
  "message": {"owner": "0x1111111111111111111111111111111111111111",
              "spender": "0x2222222222222222222222222222222222222222",
              "value": "2500000000", "nonce": 0, "deadline": 1893456000}
}"#;

#[test]
fn permit_facts_name_spender_and_value() {
    let (_, action) = prepare_typed_data("k", PERMIT).unwrap();
    assert_eq!(action.kind, Kind::Eip712Permit);
    let facts = action.typed_data.unwrap();
    assert_eq!(facts.primary_type, "Permit");
    assert_eq!(facts.standard, Some(TypedStandard::Eip2612Permit));
    assert_eq!(
        facts.grants,
        vec![TokenGrant {
            token: address!("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"),
            counterparty: Address::repeat_byte(0x22),
            amount: U256::from(2_500_000_000u64),
        }]
    );
    assert_eq!(facts.deadline, Some(U256::from(1_893_456_000u64)));
    // Other typed data is opaque and carries no grants.
    let (_, mail) = prepare_typed_data("k", MAIL).unwrap();
    assert_eq!(mail.kind, Kind::Eip712TypedData);
    let mail = mail.typed_data.unwrap();
    assert_eq!((mail.standard, mail.grants.len()), (None, 0));
}

#[test]
fn transactions_carry_gas_facts_for_the_policy() {
    let req = base(EvmTransactionType::Eip1559);
    let tx = prepare_transaction(&req).unwrap();
    assert_eq!(tx.action().gas_limit, Some(req.gas_limit));
    let max_fee: U256 = req.max_fee_per_gas.parse().unwrap();
    assert_eq!(tx.action().max_fee_per_gas, Some(max_fee));
    let mut legacy = base(EvmTransactionType::Legacy);
    legacy.max_fee_per_gas.clear();
    legacy.max_priority_fee_per_gas.clear();
    legacy.gas_price = "7".into();
    let tx = prepare_transaction(&legacy).unwrap();
    assert_eq!(tx.action().max_fee_per_gas, Some(U256::from(7)));
}
