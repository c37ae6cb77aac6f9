//! Known answers from independent EIP-712 implementations (eth-account 0.14 and MetaMask's
//! eth-sig-util, which agree on every vector here), the refusals where they disagree or
//! accept what EIP-712 does not define, a differential test against alloy's encoder on
//! random payloads both accept, classification of the standards, and the bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy_primitives::{Address, B256, U256, address, b256};
use signerd_policy::{Kind, TypedStandard};

use super::*;

fn one(ty: &str, value: &str) -> String {
    format!(
        r#"{{"types":{{"EIP712Domain":[],"T":[{{"name":"v","type":"{ty}"}}]}},"primaryType":"T","domain":{{}},"message":{{"v":{value}}}}}"#
    )
}

fn hash(json: &str) -> B256 {
    prepare_typed_data("k", json)
        .unwrap_or_else(|e| panic!("{json}: {e}"))
        .0
}

fn refused(json: &str, needle: &str) {
    match prepare_typed_data("k", json) {
        Err(EvmError::InvalidField { field, reason }) => {
            assert_eq!(field, "typed_data_json");
            assert!(
                reason.contains(needle),
                "{reason:?} does not contain {needle:?}"
            );
        }
        other => panic!("{json}: expected a refusal containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn values_in_their_documented_spellings_hash_as_the_references_do() {
    let big = "1606938044258990275541962092341162602522202993782792835301377"; // 2^200 + 1
    let cases: [(&str, String, B256); 11] = [
        (
            "bytes 0xab",
            one("bytes", "\"0xab\""),
            b256!("0x596b9ae2d11fb3c7696beb4308800d3fc95046af69c43450d1aea1c24c4324f3"),
        ),
        (
            "int256 -5",
            one("int256", "-5"),
            b256!("0xaf644903f35bdb18e7229941c5fabb4e710970422f917155f2faf39dee7eb303"),
        ),
        (
            "int8 \"-128\"",
            one("int8", "\"-128\""),
            b256!("0xb5d1a6857f5c3924dc0196e436b4113baab821074495c01153bf9de8b197d0b6"),
        ),
        (
            "uint256 JSON 2^200+1",
            one("uint256", big),
            b256!("0x0e6071bf117bf0414648f177d961ae971560139977737de166dd72863f8c0a22"),
        ),
        (
            "uint256 \"2^200+1\"",
            one("uint256", &format!("\"{big}\"")),
            b256!("0x0e6071bf117bf0414648f177d961ae971560139977737de166dd72863f8c0a22"),
        ),
        (
            "uint256 \"0xff\"",
            one("uint256", "\"0xff\""),
            b256!("0x5c6d8bf7f3d0af43ed34726311dcdd29ab1a5989903a88eb2e479f1c53d9a2ee"),
        ),
        (
            "bytes32",
            one("bytes32", &format!("\"0x{}\"", "11".repeat(32))),
            b256!("0xe16e1b3c804b7c266bb2274772e36106308ed27d6b61be82955539aa01bbcaa5"),
        ),
        (
            "bytes4",
            one("bytes4", "\"0x01020304\""),
            b256!("0xdb5abd893aa1a03e71ba756895be57acabf3daca235b12a884ab65aa65367ba1"),
        ),
        (
            "address",
            one("address", "\"0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed\""),
            b256!("0xe10248110c7edda889b74bfef1a508406643266109fc9666947db93f52851891"),
        ),
        (
            "uint16[2][]",
            one("uint16[2][]", "[[1,2],[3,4],[5,6]]"),
            b256!("0x697af05c448296143032309e7f212d51fa71a31dced6578f59876d9156fc8c8b"),
        ),
        (
            "bool",
            one("bool", "false"),
            b256!("0xf01632d50c3ec6d4b7dc96e90a13e431a8301650862b785de7a19180e980235f"),
        ),
    ];
    for (what, json, want) in cases {
        assert_eq!(hash(&json), want, "{what}");
    }
}

#[test]
fn recursive_types_are_accepted_and_hash_as_the_references_do() {
    let tree = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"}],
        "Node":[{"name":"label","type":"string"},{"name":"children","type":"Node[]"}]},
        "primaryType":"Node","domain":{"name":"tree"},
        "message":{"label":"root","children":[{"label":"a","children":[]},
            {"label":"b","children":[{"label":"c","children":[]}]}]}}"#;
    assert_eq!(
        hash(tree),
        b256!("0x7e1a0e6b6878d322614beedb2f629f998256a12a3a10f95ce09e06c5baf7f001")
    );
    // Mutual recursion is EIP-712 too; each type appears once in encodeType.
    let mutual = r#"{"types":{"EIP712Domain":[],"A":[{"name":"n","type":"uint8"},{"name":"b","type":"B[]"}],
        "B":[{"name":"a","type":"A[]"}]},"primaryType":"A","domain":{},
        "message":{"n":1,"b":[{"a":[{"n":2,"b":[]}]}]}}"#;
    let (h, a) = prepare_typed_data("k", mutual).unwrap();
    assert_ne!(h, B256::ZERO);
    assert_eq!(a.kind, Kind::Eip712TypedData);
}

#[test]
fn bytes_without_0x_is_refused_not_read_as_hex_or_text() {
    // eth-account and eth-sig-util sign the UTF-8 text "ab"; alloy signed the byte 0xab.
    refused(
        &one("bytes", "\"ab\""),
        "message.v (bytes): bytes must be 0x followed by hex digits",
    );
    refused(&one("bytes", "[171]"), "bytes must be a JSON string");
    refused(&one("bytes", "\"0xabc\""), "odd number of hex digits");
    refused(
        &one("bytes32", &format!("\"{}\"", "11".repeat(32))),
        "bytes32 must be 0x",
    );
    refused(
        &one("bytes4", "\"0x0102\""),
        "bytes4 must have exactly 8 hex digits, not 4",
    );
    let salted = r#"{"types":{"EIP712Domain":[{"name":"salt","type":"bytes32"}],"T":[]},"primaryType":"T","domain":{"salt":"11"},"message":{}}"#;
    refused(salted, "domain.salt (bytes32): bytes32 must be 0x");
}

#[test]
fn type_names_no_reference_accepts_are_refused() {
    refused(&one("A.B", "1"), "is neither an EIP-712 atomic type");
    refused(
        &one("function", "\"0x00\""),
        "is neither an EIP-712 atomic type",
    );
    refused(&one("uint", "1"), "is neither an EIP-712 atomic type");
    refused(&one("uint7", "1"), "is neither an EIP-712 atomic type");
    refused(
        &one("bytes33", "\"0x00\""),
        "is neither an EIP-712 atomic type",
    );
    refused(
        &one("(uint8,bool)", "1"),
        "is neither an EIP-712 atomic type",
    );
    refused(&one("uint8[0]", "[]"), "array length \"0\" must be 1 to");
    refused(&one("uint8[01]", "[1]"), "must be 1 to");
    for name in ["uint8", "bytes32", "function", "A.B", "1A", "bool"] {
        let json = format!(
            r#"{{"types":{{"EIP712Domain":[],"T":[{{"name":"v","type":"{name}"}}],"{name}":[]}},"primaryType":"T","domain":{{}},"message":{{"v":{{}}}}}}"#
        );
        refused(&json, &format!("type name {name:?} is not accepted"));
    }
    let member = r#"{"types":{"EIP712Domain":[],"T":[{"name":"a b","type":"uint8"}]},"primaryType":"T","domain":{},"message":{"a b":1}}"#;
    refused(member, "is not an identifier");
}

#[test]
fn integers_only_in_the_documented_forms() {
    for (value, needle) in [
        ("\"\"", "\"\" is not an integer"),
        ("\"0x\"", "\"0x\" is not 0x followed by hex digits"),
        ("\"_\"", "\"_\" is not an integer"),
        ("\"0b1\"", "\"0b1\" is not an integer"),
        ("\"0o7\"", "\"0o7\" is not an integer"),
        ("\"-\"", "\"-\" is not an integer"),
        ("\"+1\"", "\"+1\" is not an integer"),
        ("\"-0x1\"", "a hex integer cannot have a sign"),
        ("\"1__2\"", "\"1__2\" is not an integer"),
        ("\"1_000\"", "is not an integer"),
        ("\" 1\"", "is not an integer"),
        ("\"0X1\"", "is not an integer"),
        ("1.0", "1.0 is not a JSON integer"),
        ("1e2", "1e2 is not a JSON integer"),
        ("true", "not a boolean"),
        ("null", "not null"),
        ("-1", "uint256 cannot be negative"),
    ] {
        refused(&one("uint256", value), needle);
    }
    refused(&one("uint8", "256"), "does not fit in uint8");
    refused(&one("int8", "128"), "does not fit in int8");
    refused(&one("int8", "-129"), "does not fit in int8");
    let max = U256::MAX.to_string();
    hash(&one("uint256", &max));
    refused(
        &one("uint256", &format!("{max}0")),
        "does not fit in 256 bits",
    );
    // The domain's chainId follows the same rule: "" is not chain 0.
    let domain = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"}],"T":[]},"primaryType":"T","domain":{"chainId":""},"message":{}}"#;
    refused(domain, "domain.chainId (uint256): \"\" is not an integer");
    // The same number in three spellings is one value.
    assert_eq!(
        hash(&one("uint256", "255")),
        hash(&one("uint256", "\"0xff\""))
    );
    assert_eq!(
        hash(&one("uint256", "255")),
        hash(&one("uint256", "\"0255\""))
    );
}

#[test]
fn addresses_follow_the_transaction_rule() {
    // EIP-55: mixed case must carry a valid checksum, as in transaction fields.
    hash(&one(
        "address",
        "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed\"",
    ));
    hash(&one(
        "address",
        "\"0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED\"",
    ));
    refused(
        &one("address", "\"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\""),
        "mixed-case address fails the EIP-55 checksum",
    );
    refused(
        &one("address", "\"5aaeb6053f3e94c9b9a09f33669435e7ef1beaed\""),
        "must start with 0x",
    );
}

#[test]
fn the_type_bomb_is_refused_at_once() {
    // 30 structs, each with two members of the next: 2^30 nodes if the type tree were
    // expanded. Nothing expands it: the message must hold every node, and `0` is no object.
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
    let json = format!(
        r#"{{"types":{{{}}},"primaryType":"S0","domain":{{}},"message":0}}"#,
        types.join(",")
    );
    refused(&json, "message must be an object of type S0, not a number");
    // Four types of 256 members each: encodeType strings bounded before they are built.
    let members: Vec<String> = (0..256)
        .map(|i| format!(r#"{{"name":"m{i}","type":"B"}}"#))
        .collect();
    let wide = |name: &str| {
        format!(
            r#""{name}":[{}]"#,
            members
                .join(",")
                .replace("\"B\"", &format!("\"{}\"", next_of(name)))
        )
    };
    fn next_of(name: &str) -> &'static str {
        match name {
            "A" => "B",
            "B" => "C",
            "C" => "D",
            _ => "bool",
        }
    }
    let json = format!(
        r#"{{"types":{{"EIP712Domain":[],{},{},{},{}}},"primaryType":"A","domain":{{}},"message":0}}"#,
        wide("A"),
        wide("B"),
        wide("C"),
        wide("D")
    );
    assert!(json.len() < MAX_TYPED_DATA_JSON_BYTES);
    refused(&json, "message must be an object of type A");
}

#[test]
fn encode_type_strings_are_bounded_before_they_are_built() {
    // 63 types of 16 members with long names, each using the next: every encodeType repeats
    // the definitions after it, so the total grows with the square of the count.
    let n = 63;
    let long = "x".repeat(200);
    let mut types = vec![r#""EIP712Domain":[]"#.to_owned()];
    for i in 0..n {
        let next = if i + 1 == n {
            "bool".to_owned()
        } else {
            format!("T{}", i + 1)
        };
        let members: Vec<String> = (0..16)
            .map(|j| format!(r#"{{"name":"{long}{j}","type":"{next}"}}"#))
            .collect();
        types.push(format!(r#""T{i}":[{}]"#, members.join(",")));
    }
    let json = format!(
        r#"{{"types":{{{}}},"primaryType":"T0","domain":{{}},"message":{{}}}}"#,
        types.join(",")
    );
    refused(&json, &format!("more than {MAX_ENCODED_TYPES_BYTES} bytes"));
}

fn permit2_single() -> String {
    r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "PermitSingle":[{"name":"details","type":"PermitDetails"},{"name":"spender","type":"address"},{"name":"sigDeadline","type":"uint256"}],
      "PermitDetails":[{"name":"token","type":"address"},{"name":"amount","type":"uint160"},{"name":"expiration","type":"uint48"},{"name":"nonce","type":"uint48"}]},
     "primaryType":"PermitSingle",
     "domain":{"name":"Permit2","chainId":"1","verifyingContract":"0x000000000022d473030f116ddee9f6b43ac78ba3"},
     "message":{"details":{"token":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","amount":"1461501637330902918203684832716283019655932542975","expiration":"1900000000","nonce":"0"},
       "spender":"0x3333333333333333333333333333333333333333","sigDeadline":"1900000000"}}"#
        .to_owned()
}

#[test]
fn standards_are_recognized_by_structure_and_domain_not_by_name() {
    let (_, a) = prepare_typed_data("k", &permit2_single()).unwrap();
    assert_eq!(a.kind, Kind::Eip712Permit);
    let td = a.typed_data.unwrap();
    assert_eq!(td.standard, Some(TypedStandard::Permit2Single));
    assert_eq!(td.grants.len(), 1);
    assert_eq!(
        td.grants[0].token,
        address!("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")
    );
    assert_eq!(td.grants[0].counterparty, Address::repeat_byte(0x33));
    assert_eq!(td.grants[0].amount, (U256::from(1) << 160) - U256::from(1));
    assert_eq!(td.deadline, Some(U256::from(1_900_000_000u64)));
    // Permit2's structure under another domain name is not Permit2.
    let other = permit2_single().replace("\"Permit2\"", "\"Permit3\"");
    assert_eq!(
        prepare_typed_data("k", &other).unwrap().1.kind,
        Kind::Eip712TypedData
    );

    // A Uniswap V3 position "Permit" is a different struct with the same name.
    let nft = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "Permit":[{"name":"spender","type":"address"},{"name":"tokenId","type":"uint256"},{"name":"nonce","type":"uint256"},{"name":"deadline","type":"uint256"}]},
      "primaryType":"Permit","domain":{"chainId":1,"verifyingContract":"0xc36442b4a4522e871399cd717abdd847ab11fe88"},
      "message":{"spender":"0x3333333333333333333333333333333333333333","tokenId":"1","nonce":"0","deadline":"1900000000"}}"#;
    let (_, a) = prepare_typed_data("k", nft).unwrap();
    assert_eq!(a.kind, Kind::Eip712TypedData);
    assert_eq!(a.typed_data.unwrap().standard, None);

    // DAI's permit: `allowed = true` is an unlimited allowance.
    let dai = r#"{"types":{"EIP712Domain":[{"name":"name","type":"string"},{"name":"version","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "Permit":[{"name":"holder","type":"address"},{"name":"spender","type":"address"},{"name":"nonce","type":"uint256"},{"name":"expiry","type":"uint256"},{"name":"allowed","type":"bool"}]},
      "primaryType":"Permit","domain":{"name":"Dai Stablecoin","version":"1","chainId":1,"verifyingContract":"0x6b175474e89094c44da98b954eedeac495271d0f"},
      "message":{"holder":"0x1111111111111111111111111111111111111111","spender":"0x3333333333333333333333333333333333333333","nonce":0,"expiry":0,"allowed":true}}"#;
    let (_, a) = prepare_typed_data("k", dai).unwrap();
    assert_eq!(a.kind, Kind::Eip712Permit);
    let td = a.typed_data.unwrap();
    assert_eq!(td.standard, Some(TypedStandard::DaiPermit));
    assert_eq!(td.grants[0].amount, U256::MAX);
    assert_eq!(
        td.grants[0].token,
        address!("0x6b175474e89094c44da98b954eedeac495271d0f")
    );
    assert_eq!(td.deadline, None);

    // EIP-3009.
    let auth = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
      "TransferWithAuthorization":[{"name":"from","type":"address"},{"name":"to","type":"address"},{"name":"value","type":"uint256"},{"name":"validAfter","type":"uint256"},{"name":"validBefore","type":"uint256"},{"name":"nonce","type":"bytes32"}]},
      "primaryType":"TransferWithAuthorization","domain":{"chainId":1,"verifyingContract":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"},
      "message":{"from":"0x1111111111111111111111111111111111111111","to":"0x4444444444444444444444444444444444444444","value":"5000000","validAfter":0,"validBefore":1900000000,"nonce":"0x0000000000000000000000000000000000000000000000000000000000000001"}}"#;
    let (_, a) = prepare_typed_data("k", auth).unwrap();
    assert_eq!(a.kind, Kind::Eip712TransferAuthorization);
    let td = a.typed_data.unwrap();
    assert_eq!(td.grants[0].counterparty, Address::repeat_byte(0x44));
    assert_eq!(td.grants[0].amount, U256::from(5_000_000));

    // A permit whose domain lacks the token is opaque: no token to count it against.
    let no_contract = crate::chain::evm::tests::PERMIT
        .replace(
            ",\n             \"verifyingContract\": \"0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48\"",
            "",
        )
        .replace(
            ",\n      {\"name\": \"verifyingContract\", \"type\": \"address\"}",
            "",
        );
    assert_ne!(no_contract, crate::chain::evm::tests::PERMIT);
    assert_eq!(
        prepare_typed_data("k", &no_contract).unwrap().1.kind,
        Kind::Eip712TypedData
    );
}

/// A Safe transaction sending 100 ether from the Safe.
pub(crate) const SAFE_TX: &str = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}],
  "SafeTx":[{"name":"to","type":"address"},{"name":"value","type":"uint256"},{"name":"data","type":"bytes"},{"name":"operation","type":"uint8"},{"name":"safeTxGas","type":"uint256"},{"name":"baseGas","type":"uint256"},{"name":"gasPrice","type":"uint256"},{"name":"gasToken","type":"address"},{"name":"refundReceiver","type":"address"},{"name":"nonce","type":"uint256"}]},
  "primaryType":"SafeTx","domain":{"chainId":1,"verifyingContract":"0x5555555555555555555555555555555555555555"},
  "message":{"to":"0x6666666666666666666666666666666666666666","value":"100000000000000000000","data":"0x","operation":0,"safeTxGas":0,"baseGas":0,"gasPrice":0,"gasToken":"0x0000000000000000000000000000000000000000","refundReceiver":"0x0000000000000000000000000000000000000000","nonce":7}}"#;

#[test]
fn a_safe_transaction_is_decoded_into_its_call() {
    let (_, a) = prepare_typed_data("k", SAFE_TX).unwrap();
    assert_eq!(a.kind, Kind::Eip712SafeTx);
    assert_eq!(a.chain_id, Some(1));
    assert_eq!(a.to, Some(Address::repeat_byte(0x66)));
    assert_eq!(
        a.value,
        U256::from(100u64) * U256::from(10u64).pow(U256::from(18))
    );
    // A call without calldata: the empty calldata is known (no function's call), not missing.
    assert_eq!(a.calldata.as_ref().map(|c| c.to_vec()), Some(vec![]));
    let st = a.typed_data.unwrap().safe_tx.unwrap();
    assert_eq!((st.operation, st.nonce), (0, U256::from(7)));
    // Its call, when an ERC-20 transfer, is decoded like a transaction's.
    let transfer = format!(
        "0xa9059cbb{:0>64}{:0>64x}",
        "7777777777777777777777777777777777777777", 1000u64
    );
    let json = SAFE_TX
        .replace("\"data\":\"0x\"", &format!("\"data\":\"{transfer}\""))
        .replace("\"value\":\"100000000000000000000\"", "\"value\":0");
    let (_, a) = prepare_typed_data("k", &json).unwrap();
    let erc = a.erc20.unwrap();
    assert_eq!(erc.token, Address::repeat_byte(0x66));
    assert_eq!(erc.counterparty, Address::repeat_byte(0x77));
    assert_eq!(erc.amount, U256::from(1000));
    assert_eq!(a.selector, Some([0xa9, 0x05, 0x9c, 0xbb]));
    // The whole call, for the policy's argument matchers.
    assert_eq!(
        a.calldata.as_ref().map(hex::encode),
        Some(transfer[2..].to_owned())
    );
}

/// A small deterministic generator for the differential test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, bytes: usize) -> String {
        let raw: Vec<u8> = (0..bytes).map(|_| self.next() as u8).collect();
        format!("0x{}", hex::encode(raw))
    }
}

/// A random atomic type and a value of it in one of its accepted spellings.
fn atomic_value(r: &mut Rng, ty: &str) -> serde_json::Value {
    use serde_json::json;
    match ty {
        "bool" => json!(r.below(2) == 1),
        "address" => json!(r.hex(20)),
        "string" => json!(format!("s{}é", r.next())),
        "bytes" => {
            let n = r.below(40) as usize;
            json!(r.hex(n))
        }
        "bytes32" => json!(r.hex(32)),
        "bytes3" => json!(r.hex(3)),
        "uint8" => json!(r.below(256)),
        "uint64" => json!(format!("0x{:x}", r.next())),
        "uint256" => json!(format!("{}", U256::from(r.next()) * U256::from(r.next()))),
        "int32" => json!((r.next() as i32) as i64),
        "int256" => json!(format!("-{}", r.next())),
        other => panic!("{other}"),
    }
}

const ATOMICS: [&str; 11] = [
    "bool", "address", "string", "bytes", "bytes32", "bytes3", "uint8", "uint64", "uint256",
    "int32", "int256",
];

fn value_of(
    r: &mut Rng,
    ty: &str,
    structs: &[(String, Vec<(String, String)>)],
) -> serde_json::Value {
    if let Some(inner) = ty.strip_suffix("[]") {
        let n = r.below(3);
        return serde_json::Value::Array((0..n).map(|_| value_of(r, inner, structs)).collect());
    }
    if let Some((_, members)) = structs.iter().find(|(n, _)| n == ty) {
        let mut obj = serde_json::Map::new();
        for (name, t) in members {
            obj.insert(name.clone(), value_of(r, t, structs));
        }
        return serde_json::Value::Object(obj);
    }
    atomic_value(r, ty)
}

#[test]
fn hashes_agree_with_alloy_on_random_payloads_both_accept() {
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..300 {
        // Struct i may use atomics and structs defined after it (no cycles: alloy refuses them).
        let count = 1 + r.below(4) as usize;
        let mut structs: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for i in (0..count).rev() {
            let mut members = Vec::new();
            for m in 0..(1 + r.below(4)) {
                let mut ty = if !structs.is_empty() && r.below(3) == 0 {
                    structs[r.below(structs.len() as u64) as usize].0.clone()
                } else {
                    ATOMICS[r.below(ATOMICS.len() as u64) as usize].to_owned()
                };
                if r.below(4) == 0 {
                    ty.push_str("[]");
                }
                members.push((format!("m{m}"), ty));
            }
            structs.push((format!("S{i}"), members));
        }
        let primary = structs.last().unwrap().0.clone();
        let mut types = serde_json::Map::new();
        let all_domain = [
            ("name", "string", serde_json::json!("App")),
            ("version", "string", serde_json::json!("2")),
            ("chainId", "uint256", serde_json::json!(r.below(100_000))),
            ("verifyingContract", "address", serde_json::json!(r.hex(20))),
            ("salt", "bytes32", serde_json::json!(r.hex(32))),
        ];
        let mut domain_types = Vec::new();
        let mut domain = serde_json::Map::new();
        for (n, t, v) in all_domain {
            if r.below(2) == 0 {
                domain_types.push(serde_json::json!({"name": n, "type": t}));
                domain.insert(n.into(), v);
            }
        }
        types.insert(
            "EIP712Domain".into(),
            serde_json::Value::Array(domain_types),
        );
        for (name, members) in &structs {
            let list: Vec<serde_json::Value> = members
                .iter()
                .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
                .collect();
            types.insert(name.clone(), serde_json::Value::Array(list));
        }
        let message = value_of(&mut r, &primary, &structs);
        let json = serde_json::json!({
            "types": types, "primaryType": primary, "domain": domain, "message": message
        })
        .to_string();
        let ours = hash(&json);
        let alloy: alloy_dyn_abi::eip712::TypedData = serde_json::from_str(&json).unwrap();
        let theirs = alloy.eip712_signing_hash().unwrap();
        assert_eq!(ours, theirs, "round {round}: {json}");
    }
}
