//! Keys pinned in the audit log, with the soft backend: the first signature of a key writes
//! its `key.pin`, every `sign.result` names it, the pins survive restarts, and a key replaced
//! under its id is refused (UNAVAILABLE, `key_refused`, nothing signed, a metric). The Vault
//! and PKCS#11 cases are in `vault.rs` and `pkcs11.rs`.

use std::path::Path;

use serde_json::Value;
use signerd::keys::Algorithm;
use signerd_proto::v1;
use tonic::Code;

use crate::metrics::{metrics_addr, scrape};
use crate::util::*;

/// The `key.pin` records of `key`.
pub(crate) fn pins_of(audit: &Audit, key: &str) -> Vec<Value> {
    audit
        .of_type("key.pin")
        .into_iter()
        .filter(|v| v["key"] == key)
        .cloned()
        .collect()
}

/// The one `sign.result` of `req_id`.
pub(crate) fn result_of(audit: &Audit, req_id: &str) -> Value {
    let results: Vec<&Value> = audit
        .for_req(req_id)
        .into_iter()
        .filter(|v| v["type"] == "sign.result")
        .collect();
    assert_eq!(results.len(), 1, "{req_id}: {results:?}");
    results[0].clone()
}

/// The value of the metric line that starts with `series` (0 when it is absent).
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Replaces the soft key `id` in `keys` by a new key of the same id.
fn replace_soft_key(keys: &Path, id: &str, algorithm: Algorithm) {
    for e in std::fs::read_dir(keys).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{id}.")) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let pass = std::fs::read_to_string(keys.join("../keystore.pass")).unwrap();
    let pass = secrecy::SecretString::from(pass.trim().to_owned());
    signerd::keys::soft::generate(keys, id, algorithm, &pass).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_keys_are_pinned_results_name_the_pin_and_a_replaced_key_is_refused() {
    let env = TestEnv::new("pin-soft");
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);

    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let key = c
        .get_key(v1::GetKeyRequest {
            key_id: HOT.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    for id in ["pin-1", "pin-2"] {
        let resp = c.sign_evm_transaction(eip1559(id)).await.unwrap();
        let resp = resp.into_inner();
        check_ecdsa(
            resp.signature.as_ref(),
            &resp.signing_hash,
            &key.evm_address,
            false,
        );
    }
    let audit = env.wait_audit(|a| a.results("pin-2") == ["signed"]);
    // One pin, written before the first result, with the public key GetKey reports.
    let pins = pins_of(&audit, HOT);
    assert_eq!(pins.len(), 1, "{pins:?}");
    let pin = &pins[0];
    assert_eq!(pin["backend"], "soft");
    assert_eq!(pin["algorithm"], "secp256k1");
    assert_eq!(pin["version"], Value::Null);
    assert_eq!(
        pin["public_key"],
        format!("0x{}", hex::encode(&key.public_key))
    );
    assert_eq!(pin["checked"], serde_json::json!({}));
    assert_eq!(pin["weak"], serde_json::json!([]));
    let pin_seq = pin["seq"].as_u64().unwrap();
    for id in ["pin-1", "pin-2"] {
        let r = result_of(&audit, id);
        assert_eq!(r["status"], "signed");
        assert_eq!(r["pin"].as_u64(), Some(pin_seq), "{r}");
        assert!(pin_seq < r["seq"].as_u64().unwrap());
        // From the log alone: the signature recovers to the pinned public key.
        let sig = &r["signature"];
        let hash = hex::decode(r["signing_hash"].as_str().unwrap().trim_start_matches("0x"));
        let (r_, s_) = (
            hex::decode(sig["r"].as_str().unwrap().trim_start_matches("0x")).unwrap(),
            hex::decode(sig["s"].as_str().unwrap().trim_start_matches("0x")).unwrap(),
        );
        let raw = hex::decode(r["raw_tx"].as_str().unwrap().trim_start_matches("0x")).unwrap();
        let tx = <alloy_consensus::TxEnvelope as alloy_eips::eip2718::Decodable2718>::decode_2718(
            &mut raw.as_slice(),
        )
        .unwrap();
        let parity = u32::from(tx.signature().v());
        let from = recover_address(&hash.unwrap(), &r_, &s_, parity);
        let pinned = secp256k1::PublicKey::from_slice(
            &hex::decode(pin["public_key"].as_str().unwrap().trim_start_matches("0x")).unwrap(),
        )
        .unwrap();
        let pinned_address =
            alloy_primitives::Address::from_raw_public_key(&pinned.serialize_uncompressed()[1..]);
        assert_eq!(from, pinned_address, "{id}: not signed by the pinned key");
    }
    assert!(d.stop().success());

    // A restart learns the pin: the same key signs under it, and no second pin is written.
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    c.sign_evm_transaction(eip1559("pin-3")).await.unwrap();
    let audit = env.wait_audit(|a| a.results("pin-3") == ["signed"]);
    assert_eq!(pins_of(&audit, HOT).len(), 1);
    assert_eq!(result_of(&audit, "pin-3")["pin"].as_u64(), Some(pin_seq));
    assert!(d.stop().success());

    // The key file replaced by another key under the same id: refused, nothing signed.
    replace_soft_key(&env.dir.join("keys"), HOT, Algorithm::Secp256k1);
    let d = env.start();
    let addr = metrics_addr(&d);
    let before = scrape(&addr);
    assert_eq!(
        metric(
            &before,
            "signerd_key_pin_mismatch_total{reason=\"public_key\"}"
        ),
        0.0,
        "{before}"
    );
    let mut c = env.client(&d, "app").await;
    let status = refused(
        "replaced key",
        c.sign_evm_transaction(eip1559("pin-replaced")).await,
    );
    assert_status("replaced key", &status, Code::Unavailable, "pins");
    assert!(
        status
            .message()
            .contains(&format!("seq {pin_seq} (the key was replaced")),
        "{}",
        status.message()
    );
    let audit = env.wait_audit(|a| !a.results("pin-replaced").is_empty());
    audit.assert_not_signed("pin-replaced");
    let r = result_of(&audit, "pin-replaced");
    assert_eq!(r["status"], "key_refused", "{r}");
    assert_eq!(r["pin"].as_u64(), Some(pin_seq));
    assert_eq!(
        pins_of(&audit, HOT).len(),
        1,
        "a replaced key is never pinned"
    );
    // Every retry is refused the same way, and counted.
    let again = refused(
        "replaced key again",
        c.sign_evm_transaction(eip1559("pin-replaced-2")).await,
    );
    assert_eq!(again.code(), Code::Unavailable);
    let after = scrape(&addr);
    assert_eq!(
        metric(
            &after,
            "signerd_key_pin_mismatch_total{reason=\"public_key\"}"
        ),
        2.0,
        "{after}"
    );
    assert!(d.stop().success());
    // The log with its pins, allowances and refusals verifies.
    crate::audit_support::assert_verifies(&env.audit_dir(), &crate::audit_support::vkey(&env));
}
