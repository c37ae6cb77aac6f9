//! What EIP-712 preparation costs a typed-data request: signerd's strict encoder (parse with
//! duplicate-key and exact-number checks, validate, encode, classify) against alloy's
//! `TypedData` (parse and hash only), in the same run, on the specification's `Mail` example
//! and on a Permit2 `PermitBatch` of 8 tokens. Run with
//! `cargo bench -p signerd --bench typed_data`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::Criterion;
use signerd::chain::evm::prepare_typed_data;

const MAIL: &str = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"version","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
 "Person":[{"name":"name","type":"string"},{"name":"wallet","type":"address"}],
 "Mail":[{"name":"from","type":"Person"},{"name":"to","type":"Person"},{"name":"contents","type":"string"}]},
 "primaryType":"Mail","domain":{"name":"Ether Mail","version":"1","chainId":1,"verifyingContract":"0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"},
 "message":{"from":{"name":"Cow","wallet":"0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},"to":{"name":"Bob","wallet":"0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},"contents":"Hello, Bob!"}}"#;

fn permit_batch(tokens: usize) -> String {
    let details: Vec<String> = (0..tokens)
        .map(|i| {
            format!(
                r#"{{"token":"0x{:040x}","amount":"1000000","expiration":"1900000000","nonce":"{i}"}}"#,
                i + 1
            )
        })
        .collect();
    format!(
        r#"{{"types":{{"EIP712Domain":[{{"name":"name","type":"string"}},{{"name":"chainId","type":"uint256"}},{{"name":"verifyingContract","type":"address"}}],
 "PermitBatch":[{{"name":"details","type":"PermitDetails[]"}},{{"name":"spender","type":"address"}},{{"name":"sigDeadline","type":"uint256"}}],
 "PermitDetails":[{{"name":"token","type":"address"}},{{"name":"amount","type":"uint160"}},{{"name":"expiration","type":"uint48"}},{{"name":"nonce","type":"uint48"}}]}},
 "primaryType":"PermitBatch","domain":{{"name":"Permit2","chainId":"1","verifyingContract":"0x000000000022d473030f116ddee9f6b43ac78ba3"}},
 "message":{{"details":[{}],"spender":"0x3333333333333333333333333333333333333333","sigDeadline":"1900000000"}}}}"#,
        details.join(",")
    )
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let batch = permit_batch(8);
    for (name, json) in [("mail", MAIL.to_owned()), ("permit2_batch_8", batch)] {
        // Both must accept the payload and agree on its hash.
        let ours = prepare_typed_data("k", &json).unwrap().0;
        let theirs: alloy_dyn_abi::eip712::TypedData = serde_json::from_str(&json).unwrap();
        assert_eq!(ours, theirs.eip712_signing_hash().unwrap(), "{name}");
        let mut g = c.benchmark_group(name);
        g.bench_function("baseline: alloy TypedData parse + hash", |b| {
            b.iter(|| {
                let t: alloy_dyn_abi::eip712::TypedData =
                    serde_json::from_str(black_box(&json)).unwrap();
                black_box(t.eip712_signing_hash().unwrap())
            })
        });
        g.bench_function("signerd prepare_typed_data", |b| {
            b.iter(|| black_box(prepare_typed_data("k", black_box(&json)).unwrap()))
        });
        g.finish();
    }
    c.final_summary();
}
