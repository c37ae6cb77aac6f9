//! End-to-end signing: every request kind the API offers, checked against independent
//! implementations (libsecp256k1 recovery, alloy transaction decoding, ring Ed25519), the policy
//! rules that govern blind signing and denials, key listing, audit receipts and health.

use alloy_consensus::{Transaction, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, U256, keccak256};
use prost::Message;
use signerd_proto::v1;
use tonic::Code;

use crate::util::*;

/// The EIP-712 specification's `Mail` example, as `eth_signTypedData_v4` JSON.
pub(crate) const MAIL_TYPED_DATA: &str = r#"{
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

/// The EIP-712 hash of [`MAIL_TYPED_DATA`], from the specification's example.
const MAIL_HASH: &str = "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2";

/// Decodes a signed transaction with alloy and checks it against the response and the key.
pub(crate) fn check_transaction(
    resp: &v1::SignEvmTransactionResponse,
    req: &v1::SignEvmTransactionRequest,
    address: &str,
) -> TxEnvelope {
    let raw = &resp.raw_transaction;
    assert!(!raw.is_empty(), "no raw transaction");
    assert_eq!(
        resp.transaction_hash,
        keccak256(raw).to_vec(),
        "transaction_hash is not keccak256(raw)"
    );
    let tx = TxEnvelope::decode_2718(&mut raw.as_slice())
        .unwrap_or_else(|e| panic!("raw tx does not decode: {e}"));
    assert_eq!(tx.tx_hash().as_slice(), resp.transaction_hash.as_slice());
    assert_eq!(
        tx.signature_hash().as_slice(),
        resp.signing_hash.as_slice(),
        "signing hash differs from alloy's"
    );

    // The signature inside the encoded transaction recovers to the key.
    let sig = tx.signature();
    let from = recover_address(
        tx.signature_hash().as_slice(),
        &sig.r().to_be_bytes::<32>(),
        &sig.s().to_be_bytes::<32>(),
        u32::from(sig.v()),
    );
    assert_eq!(
        from.to_checksum(None),
        address,
        "raw transaction does not recover to the key"
    );
    // And the signature in the response is the same one.
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, address, false);
    let rs = resp.signature.as_ref().unwrap();
    assert_eq!(rs.r, sig.r().to_be_bytes::<32>().to_vec());
    assert_eq!(rs.s, sig.s().to_be_bytes::<32>().to_vec());
    assert_eq!(rs.y_parity, u32::from(sig.v()));

    // The fields are the ones asked for.
    assert_eq!(tx.chain_id(), Some(req.chain_id));
    assert_eq!(tx.nonce(), req.nonce);
    assert_eq!(tx.gas_limit(), req.gas_limit);
    assert_eq!(tx.to(), Some(req.to.parse::<Address>().unwrap()));
    assert_eq!(tx.value(), req.value.parse::<U256>().unwrap());
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_transactions_of_each_type_are_signed() {
    let env = TestEnv::new("tx-types");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let address = address_of(&mut c, HOT).await;

    // EIP-1559.
    let req = v1::SignEvmTransactionRequest {
        max_fee_per_gas: "30000000000".to_owned(),
        max_priority_fee_per_gas: "1000000000".to_owned(),
        ..eip1559("tx-1559")
    };
    let resp = c
        .sign_evm_transaction(req.clone())
        .await
        .unwrap()
        .into_inner();
    let tx = check_transaction(&resp, &req, &address);
    let t = tx.as_eip1559().expect("an EIP-1559 transaction").tx();
    assert_eq!(t.max_fee_per_gas, 30_000_000_000);
    assert_eq!(t.max_priority_fee_per_gas, 1_000_000_000);
    assert_eq!(raw_type(&resp), Some(0x02));
    let sig = resp.signature.as_ref().unwrap();
    assert_eq!(
        sig.v,
        u64::from(sig.y_parity),
        "typed transactions carry v = y_parity"
    );
    let mut receipts = vec![("tx-1559", resp.receipt)];

    // EIP-2930 with an access list.
    let storage_key = format!("0x{}", "00".repeat(31) + "01");
    let req = v1::SignEvmTransactionRequest {
        dry_run: false,
        r#type: v1::EvmTransactionType::Eip2930.into(),
        gas_price: "20000000000".to_owned(),
        max_fee_per_gas: String::new(),
        max_priority_fee_per_gas: String::new(),
        gas_limit: 30_000,
        nonce: 1,
        access_list: vec![v1::AccessListItem {
            address: TO.to_owned(),
            storage_keys: vec![storage_key],
        }],
        ..eip1559("tx-2930")
    };
    let resp = c
        .sign_evm_transaction(req.clone())
        .await
        .unwrap()
        .into_inner();
    let tx = check_transaction(&resp, &req, &address);
    let t = tx.as_eip2930().expect("an EIP-2930 transaction").tx();
    assert_eq!(t.gas_price, 20_000_000_000);
    assert_eq!(t.access_list.0.len(), 1);
    assert_eq!(t.access_list.0[0].address, TO.parse::<Address>().unwrap());
    assert_eq!(t.access_list.0[0].storage_keys.len(), 1);
    assert_eq!(t.access_list.0[0].storage_keys[0].as_slice()[31], 1);
    assert_eq!(raw_type(&resp), Some(0x01));
    receipts.push(("tx-2930", resp.receipt));

    // Legacy with EIP-155 replay protection.
    let req = v1::SignEvmTransactionRequest {
        dry_run: false,
        nonce: 2,
        ..legacy("tx-legacy")
    };
    let resp = c
        .sign_evm_transaction(req.clone())
        .await
        .unwrap()
        .into_inner();
    let tx = check_transaction(&resp, &req, &address);
    let t = tx.as_legacy().expect("a legacy transaction").tx();
    assert_eq!(
        t.chain_id,
        Some(1),
        "legacy transaction lacks EIP-155 chain id"
    );
    assert_eq!(t.gas_price, 20_000_000_000);
    assert!(
        raw_type(&resp).is_none(),
        "legacy transaction must be plain RLP"
    );
    let sig = resp.signature.as_ref().unwrap();
    assert_eq!(
        sig.v,
        35 + 2 * req.chain_id + u64::from(sig.y_parity),
        "EIP-155 v"
    );
    receipts.push(("tx-legacy", resp.receipt));

    let audit = env.audit();
    for (id, receipt) in receipts {
        check_receipt(&audit, receipt.as_ref(), id);
        assert_eq!(audit.results(id), ["signed"], "{id}");
    }
    audit.assert_seq_contiguous();
}

/// The EIP-2718 type byte, or `None` for legacy RLP (first byte >= 0xc0).
fn raw_type(resp: &v1::SignEvmTransactionResponse) -> Option<u8> {
    let first = *resp.raw_transaction.first()?;
    (first < 0x7f).then_some(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eip191_and_eip712_are_signed() {
    let env = TestEnv::new("messages");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let address = address_of(&mut c, HOT).await;

    let message = b"signerd black-box test: hello".to_vec();
    let resp = c
        .sign_evm_message(v1::SignEvmMessageRequest {
            dry_run: false,
            request_id: "msg-1".into(),
            key_id: HOT.into(),
            message: message.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut prefixed = format!("\x19Ethereum Signed Message:\n{}", message.len()).into_bytes();
    prefixed.extend_from_slice(&message);
    assert_eq!(
        resp.signing_hash,
        keccak256(&prefixed).to_vec(),
        "EIP-191 hash"
    );
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, true);
    let msg_receipt = resp.receipt;

    let resp = c
        .sign_typed_data(v1::SignTypedDataRequest {
            dry_run: false,
            request_id: "mail-1".into(),
            key_id: HOT.into(),
            typed_data_json: MAIL_TYPED_DATA.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        hex::encode(&resp.signing_hash),
        MAIL_HASH,
        "EIP-712 hash of the spec's Mail example"
    );
    check_ecdsa(resp.signature.as_ref(), &resp.signing_hash, &address, true);

    let audit = env.audit();
    check_receipt(&audit, msg_receipt.as_ref(), "msg-1");
    check_receipt(&audit, resp.receipt.as_ref(), "mail-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_digest_needs_a_rule_naming_it() {
    let env = TestEnv::new("digest");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let digest = keccak256(b"blind signing").to_vec();

    // `ed` has a rule naming raw_digest.
    let key = c
        .get_key(v1::GetKeyRequest { key_id: ED.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.algorithm, i32::from(v1::Algorithm::Ed25519));
    assert_eq!(key.public_key.len(), 32);
    let resp = c
        .sign_digest(v1::SignDigestRequest {
            dry_run: false,
            request_id: "digest-ed".into(),
            key_id: ED.into(),
            digest: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let sig = resp.signature.as_ref().expect("a signature");
    assert_eq!(sig.bytes.len(), 64);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.public_key)
        .verify(&digest, &sig.bytes)
        .expect("Ed25519 signature verifies with ring");

    // `hot` is allowed for everything but raw digests: blind signing is denied by default.
    let st = refused(
        "raw digest with hot",
        c.sign_digest(v1::SignDigestRequest {
            dry_run: false,
            request_id: "digest-hot".into(),
            key_id: HOT.into(),
            digest,
        })
        .await,
    );
    assert_status(
        "raw digest with hot",
        &st,
        Code::PermissionDenied,
        "no rule allows",
    );

    let audit = env.wait_audit(|a| !a.results("digest-hot").is_empty());
    check_receipt(&audit, resp.receipt.as_ref(), "digest-ed");
    assert_eq!(audit.results("digest-hot"), ["denied"]);
    let decision = audit
        .for_req("digest-hot")
        .into_iter()
        .find(|v| v["type"] == "sign.decision")
        .cloned();
    assert_eq!(decision.expect("a decision record")["decision"], "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rule_wins_over_allow() {
    let env = TestEnv::new("deny");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // `requesters-hot` allows this contract creation; `no-contract-creation` denies it.
    let req = v1::SignEvmTransactionRequest {
        dry_run: false,
        to: String::new(),
        value: String::new(),
        data: INIT_CODE.to_vec(),
        gas_limit: 100_000,
        ..eip1559("deploy-1")
    };
    let st = refused(
        "contract creation",
        c.sign_evm_transaction(req.clone()).await,
    );
    assert_status(
        "contract creation",
        &st,
        Code::PermissionDenied,
        "no-contract-creation",
    );
    // A retry gets the same answer (the denial is stored), and still nothing is signed.
    let st = refused("contract creation retry", c.sign_evm_transaction(req).await);
    assert_status(
        "contract creation retry",
        &st,
        Code::PermissionDenied,
        "no-contract-creation",
    );

    let audit = env.wait_audit(|a| !a.results("deploy-1").is_empty());
    assert_eq!(audit.results("deploy-1"), ["denied"]);
    let result = audit
        .for_req("deploy-1")
        .into_iter()
        .find(|v| v["type"] == "sign.result")
        .cloned()
        .unwrap();
    assert_eq!(result["rule"], "no-contract-creation");
    assert!(
        result.get("signature").is_none_or(|s| s.is_null()),
        "a denied result carries a signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_and_health_is_serving() {
    let env = TestEnv::new("keys");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let keys = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert!(ids.contains(&HOT) && ids.contains(&ED), "ListKeys: {ids:?}");
    for k in &keys {
        assert_eq!(k.backend, "soft");
        let got = c
            .get_key(v1::GetKeyRequest {
                key_id: k.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.encode_to_vec(),
            k.encode_to_vec(),
            "GetKey and ListKeys disagree on {}",
            k.id
        );
    }
    let hot = keys.iter().find(|k| k.id == HOT).unwrap();
    assert_eq!(hot.algorithm, i32::from(v1::Algorithm::Secp256k1));
    assert_eq!(hot.public_key.len(), 33, "compressed SEC1");
    // The address is keccak256 of the uncompressed point, EIP-55 checksummed.
    let pk = secp256k1::PublicKey::from_slice(&hot.public_key).unwrap();
    let expected = Address::from_slice(&keccak256(&pk.serialize_uncompressed()[1..])[12..]);
    assert_eq!(hot.evm_address, expected.to_checksum(None));
    let ed = keys.iter().find(|k| k.id == ED).unwrap();
    assert!(ed.evm_address.is_empty(), "ed25519 key has an EVM address");

    let st = refused(
        "GetKey unknown",
        c.get_key(v1::GetKeyRequest {
            key_id: "nope".into(),
        })
        .await,
    );
    assert_status("GetKey unknown", &st, Code::NotFound, "nope");

    let channel = signerd::client::channel(&env.settings(&d, "app"))
        .await
        .unwrap();
    assert_eq!(
        health(channel.clone(), SIGNER_SERVICE).await.unwrap(),
        SERVING
    );
    assert_eq!(health(channel.clone(), "").await.unwrap(), SERVING);

    // Server reflection lets any gRPC tool discover the API.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("reflection did not list services: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SIGNER_SERVICE), "reflection: {names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health"),
        "reflection: {names:?}"
    );
}
