//! What a compromised requester tried against a hot-wallet policy, each as the exact request
//! that got through before: a typed-data type bomb, fees that no limit counted, a 32-byte
//! "message" that is a Safe transaction's hash, transfers on a chain no limit counted, a
//! permit on an unregistered chain, and typed data classified by its name alone.

use std::process::Command;
use std::time::{Duration, Instant};

use signerd_proto::v1;
use tonic::Code;

use crate::util::*;

const USDC: &str = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
const SPENDER: &str = "0x2222222222222222222222222222222222222222";

/// A hot wallet: transfers and USDC payouts (no chain named), text messages, permits to
/// one spender; 1 ETH and 10,000 USDC a day on chain 1.
const HOT_WALLET: &str = r#"version = 1
serial = 1

[[asset]]
chain_id = 1
contract = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
symbol = "USDC"
decimals = 6

[[rule]]
id = "payouts"
effect = "allow"
roles = ["requester"]
keys = ["hot"]
kinds = ["native_transfer", "erc20_transfer"]

[[rule]]
id = "messages"
effect = "allow"
roles = ["requester"]
keys = ["hot"]
kinds = ["eip191_message"]

[[rule]]
id = "permits"
effect = "allow"
roles = ["requester"]
keys = ["hot"]
kinds = ["eip712_permit"]
permit_spenders = ["0x2222222222222222222222222222222222222222"]

[[limit]]
id = "daily-eth"
asset = "native"
chain_ids = [1]
window = "24h"
max_amount = "1 ether"

[[limit]]
id = "daily-usdc"
asset = "USDC"
chain_ids = [1]
window = "24h"
max_amount = "10000 USDC"
"#;

fn env_with(name: &str, policy: &str) -> TestEnv {
    TestEnv::with(
        name,
        Opts {
            policy: policy.into(),
            ..Opts::default()
        },
    )
}

fn typed(request_id: &str, json: &str) -> v1::SignTypedDataRequest {
    v1::SignTypedDataRequest {
        dry_run: false,
        request_id: request_id.into(),
        key_id: HOT.into(),
        typed_data_json: json.into(),
    }
}

fn message(request_id: &str, bytes: &[u8]) -> v1::SignEvmMessageRequest {
    v1::SignEvmMessageRequest {
        dry_run: false,
        request_id: request_id.into(),
        key_id: HOT.into(),
        message: bytes.to_vec(),
    }
}

/// 30 structs, each with two members of the next, ending in `bool`; message `0`.
fn type_bomb() -> String {
    let mut types = vec![r#""EIP712Domain":[]"#.to_owned()];
    for i in 0..30 {
        let next = if i == 29 {
            "bool".to_owned()
        } else {
            format!("S{}", i + 1)
        };
        types.push(format!(
            r#""S{i}":[{{"name":"a","type":"{next}"}},{{"name":"b","type":"{next}"}}]"#
        ));
    }
    format!(
        r#"{{"types":{{{}}},"primaryType":"S0","domain":{{}},"message":0}}"#,
        types.join(",")
    )
}

#[tokio::test]
async fn a_typed_data_type_bomb_is_refused_at_once_and_the_daemon_keeps_serving() {
    let env = TestEnv::new("bomb");
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let bomb = type_bomb();
    assert!(bomb.len() < 2_000, "{} bytes", bomb.len());
    for i in 0..4 {
        let started = Instant::now();
        let st = refused(
            "type bomb",
            c.sign_typed_data(typed(&format!("bomb-{i}"), &bomb)).await,
        );
        let took = started.elapsed();
        assert_status(
            "type bomb",
            &st,
            Code::InvalidArgument,
            "typed_data_json: message must be an object of type S0",
        );
        assert!(took < Duration::from_secs(1), "answered after {took:?}");
    }
    // Still serving, typed data included.
    c.sign_evm_transaction(eip1559("after-bomb")).await.unwrap();
    c.sign_typed_data(typed("after-bomb-mail", crate::signing::MAIL_TYPED_DATA))
        .await
        .unwrap();
    // The refusals are in the audit log.
    let audit = env.wait_audit(|a| a.results("bomb-3").len() == 1);
    assert_eq!(audit.results("bomb-0"), ["invalid_argument"]);
}

#[tokio::test]
async fn gas_fees_count_toward_the_native_limit() {
    let env = env_with("fees", HOT_WALLET);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // value 0, 21,000 gas at 4.76e15 wei: up to 99.96 ETH of fees.
    let huge_fee = v1::SignEvmTransactionRequest {
        value: "0".into(),
        max_fee_per_gas: "4760000000000000".into(),
        max_priority_fee_per_gas: "4760000000000000".into(),
        ..eip1559("fee-1559")
    };
    let st = refused("fee", c.sign_evm_transaction(huge_fee).await);
    assert_status("fee", &st, Code::PermissionDenied, "daily-eth");
    assert!(
        st.message().contains("fee up to 99.96 ether"),
        "{}",
        st.message()
    );
    let huge_legacy = v1::SignEvmTransactionRequest {
        value: "0".into(),
        gas_price: "4760000000000000".into(),
        ..legacy("fee-legacy")
    };
    let st = refused("legacy fee", c.sign_evm_transaction(huge_legacy).await);
    assert_status("legacy fee", &st, Code::PermissionDenied, "daily-eth");
    // A zero-amount token transfer pays its fee in ETH too.
    let zero_usdc = v1::SignEvmTransactionRequest {
        to: USDC.into(),
        value: "0".into(),
        data: erc20_transfer(TO, 0),
        gas_limit: 60_000,
        max_fee_per_gas: "20000000000000000".into(),
        max_priority_fee_per_gas: "1".into(),
        ..eip1559("fee-token")
    };
    let st = refused("token fee", c.sign_evm_transaction(zero_usdc).await);
    assert_status("token fee", &st, Code::PermissionDenied, "daily-eth");
    // A normal fee is counted with the value: 0.5 ETH + 21,000 x 10 gwei.
    let ok = v1::SignEvmTransactionRequest {
        value: "500000000000000000".into(),
        max_fee_per_gas: "10000000000".into(),
        max_priority_fee_per_gas: "1".into(),
        ..eip1559("fee-ok")
    };
    c.sign_evm_transaction(ok).await.unwrap();
    let audit = env.wait_audit(|a| a.results("fee-ok").len() == 1);
    let dec = audit
        .for_req("fee-ok")
        .into_iter()
        .find(|r| r["type"] == "sign.decision")
        .cloned()
        .unwrap();
    assert_eq!(dec["charges"][0]["limit"], "daily-eth", "{dec}");
    assert_eq!(dec["charges"][0]["amount"], "500210000000000000", "{dec}");
    for id in ["fee-1559", "fee-legacy", "fee-token"] {
        audit.assert_not_signed(id);
    }
}

fn erc20_transfer(to: &str, amount: u64) -> Vec<u8> {
    let mut data = vec![0xa9, 0x05, 0x9c, 0xbb];
    data.extend_from_slice(&[0; 12]);
    data.extend_from_slice(&hex::decode(&to[2..]).unwrap());
    let mut word = [0u8; 32];
    word[24..].copy_from_slice(&amount.to_be_bytes());
    data.extend_from_slice(&word);
    data
}

#[tokio::test]
async fn a_32_byte_or_binary_message_is_blind_signing() {
    let env = env_with("messages", HOT_WALLET);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // The EIP-712 hash of a SafeTx sending 100 ETH: with v + 4 it would pass Safe's
    // checkSignatures (eth_sign branch).
    let safe_tx_hash = alloy_primitives::keccak256(b"SafeTx sending 100 ETH away");
    let st = refused(
        "hash",
        c.sign_evm_message(message("hash", safe_tx_hash.as_slice()))
            .await,
    );
    assert_status("hash", &st, Code::PermissionDenied, "no rule allows");
    let st = refused(
        "binary",
        c.sign_evm_message(message("binary", &[0xff, 0xfe, 0x00, 0x41]))
            .await,
    );
    assert_status("binary", &st, Code::PermissionDenied, "no rule allows");
    // 32 printable characters are 32 bytes too.
    let st = refused(
        "32 chars",
        c.sign_evm_message(message("chars", b"abcdefghijklmnopqrstuvwxyz012345"))
            .await,
    );
    assert_status("32 chars", &st, Code::PermissionDenied, "no rule allows");
    c.sign_evm_message(message("text", b"Sign in to example.com"))
        .await
        .unwrap();
    let audit = env.wait_audit(|a| a.results("text").len() == 1);
    let dec = audit
        .for_req("hash")
        .into_iter()
        .find(|r| r["type"] == "sign.decision")
        .cloned()
        .unwrap();
    assert_eq!(dec["action"]["kind"], "eip191_binary", "{dec}");
}

#[tokio::test]
async fn limits_count_every_chain_they_name_and_check_warns_about_the_rest() {
    // The hot wallet's rules name no chain, and its ETH limit counts chain 1 only.
    let env = env_with("chains", HOT_WALLET);
    let policy = env.dir.join("hot-wallet.toml");
    std::fs::write(&policy, HOT_WALLET).unwrap();
    let out = Command::new(SIGNERCTL)
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(
            "rule `payouts`: allows transactions on chains no native limit counts (any chain but 1)"
        ),
        "{text}"
    );
    // With the limit on chains 1 and 42161, six transfers of 0.5 ETH on 42161: two fit.
    let both = HOT_WALLET.replacen(
        "chain_ids = [1]\nwindow",
        "chain_ids = [1, 42161]\nwindow",
        1,
    );
    assert_ne!(both, HOT_WALLET);
    let env = env_with("chains-both", &both);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let mut signed = 0;
    for i in 0..6 {
        let req = v1::SignEvmTransactionRequest {
            chain_id: 42161,
            value: "500000000000000000".into(),
            ..eip1559(&format!("arb-{i}"))
        };
        match c.sign_evm_transaction(req).await {
            Ok(_) => signed += 1,
            Err(st) => assert_status("over", &st, Code::PermissionDenied, "daily-eth"),
        }
    }
    assert_eq!(signed, 2);
}

fn usdc_permit(chain: u64) -> String {
    format!(
        r#"{{"types":{{"EIP712Domain":[{{"name":"name","type":"string"}},{{"name":"version","type":"string"}},{{"name":"chainId","type":"uint256"}},{{"name":"verifyingContract","type":"address"}}],
        "Permit":[{{"name":"owner","type":"address"}},{{"name":"spender","type":"address"}},{{"name":"value","type":"uint256"}},{{"name":"nonce","type":"uint256"}},{{"name":"deadline","type":"uint256"}}]}},
        "primaryType":"Permit","domain":{{"name":"USD Coin","version":"2","chainId":{chain},"verifyingContract":"{USDC}"}},
        "message":{{"owner":"0x1111111111111111111111111111111111111111","spender":"{SPENDER}","value":"2500000000","nonce":0,"deadline":1893456000}}}}"#
    )
}

#[tokio::test]
async fn permits_are_judged_by_structure_token_and_chain() {
    let env = env_with("permits", HOT_WALLET);
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    // An EIP-2612 permit of USDC on chain 1 to the allowed spender: signed and counted.
    c.sign_typed_data(typed("permit-1", &usdc_permit(1)))
        .await
        .unwrap();
    // The same permit with domain chain 137 or 42161: no registered asset, no limit counts it.
    for chain in [137, 42161] {
        let st = refused(
            "chain",
            c.sign_typed_data(typed(&format!("permit-{chain}"), &usdc_permit(chain)))
                .await,
        );
        assert_status(
            "unregistered chain",
            &st,
            Code::PermissionDenied,
            "no rule allows",
        );
    }
    // A Uniswap V3 position "Permit": another struct with the same name is not a token permit.
    let nft = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "Permit":[{"name":"spender","type":"address"},{"name":"tokenId","type":"uint256"},{"name":"nonce","type":"uint256"},{"name":"deadline","type":"uint256"}]},
      "primaryType":"Permit","domain":{"chainId":1,"verifyingContract":"0xC36442b4a4522E871399CD717aBDD847Ab11FE88"},
      "message":{"spender":"0x2222222222222222222222222222222222222222","tokenId":"1","nonce":"0","deadline":"1893456000"}}"#;
    let st = refused("nft permit", c.sign_typed_data(typed("nft", nft)).await);
    assert_status("nft permit", &st, Code::PermissionDenied, "no rule allows");
    // A DAI-style permit (allowed = true: unlimited) of a token that is not registered.
    let dai = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"version","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "Permit":[{"name":"holder","type":"address"},{"name":"spender","type":"address"},{"name":"nonce","type":"uint256"},{"name":"expiry","type":"uint256"},{"name":"allowed","type":"bool"}]},
      "primaryType":"Permit","domain":{"name":"Dai Stablecoin","version":"1","chainId":1,"verifyingContract":"0x6B175474E89094C44Da98b954EedeAC495271d0F"},
      "message":{"holder":"0x1111111111111111111111111111111111111111","spender":"0x2222222222222222222222222222222222222222","nonce":0,"expiry":0,"allowed":true}}"#;
    let st = refused("dai permit", c.sign_typed_data(typed("dai", dai)).await);
    assert_status("dai permit", &st, Code::PermissionDenied, "no rule allows");
    // A Safe transaction moving 100 ETH is its own kind, which no rule here names.
    let safe = crate::signing::MAIL_TYPED_DATA; // opaque typed data: not named either
    let st = refused("mail", c.sign_typed_data(typed("mail", safe)).await);
    assert_status("mail", &st, Code::PermissionDenied, "no rule allows");

    let audit = env.wait_audit(|a| a.results("mail").len() == 1);
    let dec = audit
        .for_req("permit-1")
        .into_iter()
        .find(|r| r["type"] == "sign.decision")
        .cloned()
        .unwrap();
    assert_eq!(dec["action"]["kind"], "eip712_permit", "{dec}");
    assert_eq!(dec["charges"][0]["limit"], "daily-usdc", "{dec}");
    assert_eq!(dec["charges"][0]["amount"], "2500000000", "{dec}");
    for id in ["permit-137", "permit-42161", "nft", "dai", "mail"] {
        audit.assert_not_signed(id);
    }
}
