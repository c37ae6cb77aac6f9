//! Parse errors: every refusal names file, line and column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn err(src: &str) -> String {
    match Policy::parse("p.toml", src) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "version = 1\nserial = 1\n";
const USDC: &str = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";

fn with(body: &str) -> String {
    format!("{HEAD}{body}")
}

fn assets() -> String {
    format!(
        r#"[[asset]]
chain_id = 1
contract = "native"
symbol = "ETH"
decimals = 18
[[asset]]
chain_id = 1
contract = "{USDC}"
symbol = "USDC"
decimals = 6
[[asset]]
chain_id = 10
contract = "0x0b2c639c533813f4aa9d7837caf62653d097ff85"
symbol = "USDC"
decimals = 6
"#
    )
}

#[test]
fn unknown_field_is_located() {
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\n  valu = 3\n",
    ));
    assert!(e.starts_with("p.toml:6:3: "), "{e}");
    assert!(e.contains("unknown field `valu`"), "{e}");
    let e = err(&with("[[limit]]\nid = \"a\"\nwindwo = \"1h\"\n"));
    assert!(
        e.starts_with("p.toml:5:1: ") && e.contains("unknown field `windwo`"),
        "{e}"
    );
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nhours = { from = \"09:00\", to = \"10:00\", tz = \"+01:00\" }\n",
    ));
    assert!(
        e.starts_with("p.toml:6:") && e.contains("unknown field `tz`"),
        "{e}"
    );
}

#[test]
fn unknown_kind_and_effect_are_located() {
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nkinds = [\"teleport\"]\n",
    ));
    assert!(e.starts_with("p.toml:6:"), "{e}");
    assert!(e.contains("teleport"), "{e}");
    let e = err(&with("[[rule]]\nid = \"a\"\neffect = \"permit\"\n"));
    assert!(e.starts_with("p.toml:5:10: "), "{e}");
}

#[test]
fn duplicate_ids_empty_lists_and_versions_are_refused() {
    let dup = with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\n[[limit]]\nid = \"a\"\nwindow = \"1h\"\nmax_count = 1\n",
    );
    assert_eq!(
        err(&dup),
        "p.toml:7:6: id `a` is used twice; rules, limits and rate limits share one id space"
    );
    let empty = with("[[rule]]\nid = \"a\"\neffect = \"allow\"\nkeys = []\n");
    assert_eq!(
        err(&empty),
        "p.toml:6:8: rule `a`: `keys` is empty; omit it to match any"
    );
    assert_eq!(
        err("version = 2\nserial = 1\n"),
        "p.toml:1:11: version 2 is not supported (this signerd reads version 1)"
    );
    assert!(err("serial = 1\n").contains("missing field `version`"));
    assert!(
        err(&with("[[rule]]\nid = \"a b\"\neffect = \"allow\"\n"))
            .starts_with("p.toml:4:6: id `a b` is not a valid name")
    );
}

#[test]
fn oversized_file_is_refused() {
    let big = format!("{HEAD}#{}\n", "x".repeat(MAX_POLICY_BYTES));
    assert!(err(&big).contains("more than the"));
}

#[test]
fn bad_checksum_is_located() {
    // The last character's case is wrong.
    let src = with(&format!(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nto = [\n  \"{}\",\n  \"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD\",\n]\n",
        USDC
    ));
    let e = err(&src);
    assert!(e.starts_with("p.toml:8:3: "), "{e}");
    assert!(
        e.contains("wrong EIP-55 checksum (expected 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed)"),
        "{e}"
    );
    let e = err(&with("[address_books.x]\naddresses = [\"0x1234\"]\n"));
    assert!(
        e.starts_with("p.toml:4:14: ") && e.contains("not an address"),
        "{e}"
    );
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nto = [\"book:nope\"]\n",
    ));
    assert!(
        e.starts_with("p.toml:6:7: rule `a`: address book `nope` is not defined"),
        "{e}"
    );
}

#[test]
fn bad_amounts_are_located() {
    let base = assets();
    let rule = |field: &str, v: &str, chains: &str| {
        format!("{HEAD}{base}[[rule]]\nid = \"r\"\neffect = \"allow\"\n{chains}{field} = {v}\n")
    };
    let line = 2 + base.lines().count() + 4;
    let e = err(&rule("value_max", "\"1.0000000000000000001 ether\"", ""));
    assert!(e.starts_with(&format!("p.toml:{line}:13: ")), "{e}");
    assert!(
        e.contains("19 fractional digits but the unit has only 18 decimals"),
        "{e}"
    );
    let e = err(&rule("erc20_amount_max", "\"2500 USDC\"", ""));
    assert!(
        e.contains("`2500 USDC`: symbol `USDC` is ambiguous (1:0xa0b8"),
        "{e}"
    );
    assert!(
        Policy::parse(
            "p.toml",
            &rule("erc20_amount_max", "\"2500 USDC\"", "chain_ids = [10]\n")
        )
        .is_ok()
    );
    let e = err(&rule(
        "erc20_amount_max",
        "\"2500 USDX\"",
        "chain_ids = [1]\n",
    ));
    assert!(e.contains("unknown token symbol `USDX` on chain 1"), "{e}");
    let e = err(&rule("value_max", "\"5 USDC\"", "chain_ids = [1]\n"));
    assert!(e.contains("names a token"), "{e}");
    let e = err(&rule(
        "erc20_amount_max",
        "\"5 ether\"",
        "chain_ids = [1]\n",
    ));
    assert!(e.contains("native units"), "{e}");
    let e = err(&rule("value_max", "1.5", ""));
    assert!(e.contains("is a float"), "{e}");
    let e = err(&rule("value_max", "-1", ""));
    assert!(e.contains("negative"), "{e}");
    let e = err(&rule("value_max", "\"1.5\"", ""));
    assert!(e.contains("no unit"), "{e}");
    let huge = format!("\"{}0\"", alloy_primitives::U256::MAX);
    let e = err(&rule("value_max", &huge, ""));
    assert!(e.contains("does not fit in 256 bits"), "{e}");
    let e = err(&rule("value_max", "\"1e18 wei\"", ""));
    assert!(e.contains("not an amount"), "{e}");
    assert!(Policy::parse("p.toml", &rule("value_max", "\"1.5 ETH\"", "")).is_ok());
    assert!(Policy::parse("p.toml", &rule("max_fee_per_gas_max", "\"30.5 gwei\"", "")).is_ok());
}

#[test]
fn asset_registry_is_validated() {
    let e = err(&with(
        "[[asset]]\nchain_id = 1\ncontract = \"native\"\nsymbol = \"ETH\"\ndecimals = 78\n",
    ));
    assert!(
        e.starts_with("p.toml:7:12: decimals 78 is more than 77"),
        "{e}"
    );
    let e = err(&with(&format!(
        "[[asset]]\nchain_id = 1\ncontract = \"{USDC}\"\nsymbol = \"ETH\"\ndecimals = 6\n"
    )));
    assert!(e.contains("reserved"), "{e}");
    let e = err(&with(&format!(
        "[[asset]]\nchain_id = 1\ncontract = \"{USDC}\"\nsymbol = \"A\"\ndecimals = 6\n[[asset]]\nchain_id = 1\ncontract = \"{USDC}\"\nsymbol = \"B\"\ndecimals = 6\n"
    )));
    assert!(e.contains("registered twice"), "{e}");
    let e = err(&with(
        "[[asset]]\nchain_id = 1\ncontract = \"nativ\"\nsymbol = \"X\"\ndecimals = 6\n",
    ));
    assert!(
        e.starts_with("p.toml:5:12: ") && e.contains("\"native\""),
        "{e}"
    );
}

#[test]
fn groups_and_approvals_are_validated() {
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\ngroups = [\"ops\"]\n",
    ));
    assert!(
        e.starts_with("p.toml:6:11: rule `a`: group `ops` is not defined"),
        "{e}"
    );
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nttl = \"1h\"\n",
    ));
    assert!(
        e.contains("`ttl` is only for rules with effect = \"require_approval\""),
        "{e}"
    );
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"require_approval\"\n",
    ));
    assert!(e.contains("needs `approvals"), "{e}");
    let g = "[groups]\nops = [\"a\", \"b\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\nb = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n";
    let e = err(&with(&format!(
        "{g}[[rule]]\nid = \"a\"\neffect = \"require_approval\"\napprovals = [{{ group = \"ops\", min = 3 }}]\nttl = \"1h\"\n"
    )));
    assert!(e.contains("`min` must be 1 to 2"), "{e}");
    let e = err(&with(&format!(
        "{g}[[rule]]\nid = \"a\"\neffect = \"require_approval\"\napprovals = [{{ group = \"ops\", min = 1 }}]\n"
    )));
    assert!(e.contains("needs `ttl`"), "{e}");
    let e = err(&with(&format!(
        "{g}[[rule]]\nid = \"a\"\neffect = \"require_approval\"\napprovals = [{{ group = \"ops\", min = 1 }}]\nttl = \"0h\"\n"
    )));
    assert!(e.contains("zero"), "{e}");
    let e = err(&with(
        "[groups]\nops = [\"a\", \"c\"]\n[approvers]\na = \"ed25519:5866666666666666666666666666666666666666666666666666666666666666\"\n[[rule]]\nid = \"a\"\neffect = \"require_approval\"\napprovals = [{ group = \"ops\", min = 1 }]\nttl = \"1h\"\n",
    ));
    assert!(
        e.contains("member `c` of approver group `ops` has no key in [approvers]"),
        "{e}"
    );
    let e = err(&with(
        "[approvers]\na = \"5866666666666666666666666666666666666666666666666666666666666666\"\n",
    ));
    assert!(
        e.contains(":4:5:") && e.contains("must be written `ed25519:"),
        "{e}"
    );
    let e = err(&with("[approvers]\na = \"ed25519:58\"\n"));
    assert!(e.contains("exactly 64 hex digits"), "{e}");
    let e = err(&with(&format!(
        "[approvers]\na = \"ed25519:02{}\"\n",
        "00".repeat(31)
    )));
    assert!(e.contains("not a valid Ed25519 public key"), "{e}");
    let e = err(&with("[groups]\nops = []\n"));
    assert!(e.contains("group `ops` is empty"), "{e}");
}

#[test]
fn limits_are_validated() {
    let base = assets();
    let lim = |body: &str| format!("{HEAD}{base}[[limit]]\nid = \"l\"\n{body}");
    let e = err(&lim("asset = \"native\"\nper_tx_max = \"1 ether\"\n"));
    assert!(e.contains("`native` needs `chain_ids`"), "{e}");
    let e = err(&lim("per_tx_max = \"1 ether\"\n"));
    assert!(e.contains("`per_tx_max` needs `asset`"), "{e}");
    let e = err(&lim(
        "chain_ids = [1]\nasset = \"native\"\nmax_amount = \"1 ether\"\n",
    ));
    assert!(e.contains("need a `window`"), "{e}");
    let e = err(&lim("window = \"1h\"\n"));
    assert!(
        e.contains("`window` needs `max_amount` or `max_count`"),
        "{e}"
    );
    let e = err(&lim(
        "window = \"1h\"\nmax_count = 1\nkey_by = [\"asset\"]\n",
    ));
    assert!(e.contains("the limit has no `asset`"), "{e}");
    let e = err(&lim("asset = \"USDC\"\nper_tx_max = \"1 USDC\"\n"));
    assert!(e.contains("symbol `USDC` is ambiguous"), "{e}");
    let e = err(&lim(
        "chain_ids = [1]\nasset = \"USDC\"\nper_tx_max = \"1 ETH\"\n",
    ));
    assert!(e.contains("is not in the units of asset 1:0xa0b8"), "{e}");
    let e = err(&lim("window = \"2 hours\"\nmax_count = 1\n"));
    assert!(e.contains("is not a duration"), "{e}");
    let e = err(&lim("window = \"1h\"\nmax_count = 0\n"));
    assert!(e.contains("at least 1"), "{e}");
    let e = err(&lim(
        "window = \"1h\"\nmax_count = 1\nkey_by = [\"wallet\"]\n",
    ));
    assert!(e.contains("unknown variant `wallet`"), "{e}");
    assert!(Policy::parse("p.toml", &lim("chain_ids = [1]\nasset = \"USDC\"\nper_tx_max = \"1.5 USDC\"\nwindow = \"7d\"\nmax_amount = 100000000\nkey_by = [\"key\", \"destination\"]\n")).is_ok());
    assert!(
        Policy::parse(
            "p.toml",
            &lim("asset = { chain_id = 10, contract = \"native\" }\nper_tx_max = \"1 ether\"\n")
        )
        .is_ok()
    );
}

#[test]
fn hours_selectors_and_rate_limits_are_validated() {
    let rule = |body: &str| {
        with(&format!(
            "[[rule]]\nid = \"r\"\neffect = \"allow\"\n{body}\n"
        ))
    };
    let e = err(&rule("hours = { from = \"09:00\", to = \"09:00\" }"));
    assert!(e.contains("`from` equals `to`"), "{e}");
    let e = err(&rule("hours = { from = \"9:00\", to = \"17:00\" }"));
    assert!(
        e.starts_with("p.toml:6:18: ") && e.contains("not a time of day"),
        "{e}"
    );
    let e = err(&rule(
        "hours = { from = \"09:00\", to = \"17:00\", utc_offset = \"CET\" }",
    ));
    assert!(e.contains("not a UTC offset"), "{e}");
    let e = err(&rule(
        "hours = { from = \"09:00\", to = \"17:00\", days = [\"monday\"] }",
    ));
    assert!(e.contains("not a day"), "{e}");
    let e = err(&rule("selectors = [\"transfer(address, uint256)\"]"));
    assert!(
        e.starts_with("p.toml:6:14: ") && e.contains("not a selector"),
        "{e}"
    );
    let e = err(&with(
        "[[rate_limit]]\nid = \"r\"\nwindow = \"1m\"\nmax_requests = 0\n",
    ));
    assert!(e.contains("`max_requests` must be at least 1"), "{e}");
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    assert_eq!(line_col("", 0), (1, 1));
    // Offsets inside a multi-byte character do not panic.
    assert_eq!(line_col("é", 1), (1, 1));
}

#[test]
fn asset_refs_have_clear_errors() {
    let lim = |asset: &str| {
        with(&format!(
            "[[limit]]\nid = \"l\"\nasset = {asset}\nper_tx_max = 1\n"
        ))
    };
    let e = err(&lim("{ chain_id = 1, contract = \"nativ\" }"));
    assert!(e.starts_with("p.toml:5:"), "{e}");
    assert!(e.contains("\"native\""), "{e}");
    let e = err(&lim("5"));
    assert!(e.starts_with("p.toml:5:9: "), "{e}");
    assert!(
        e.contains("\"native\", an asset symbol, or { chain_id, contract }"),
        "{e}"
    );
    let e = err(&lim(
        "{ chain_id = 1, contract = \"native\", symbol = \"X\" }",
    ));
    assert!(e.contains("unknown field `symbol`"), "{e}");
}

#[test]
fn schema_errors_name_the_field_and_suggest_a_known_one() {
    let e = err(&with(
        "[[limit]]\nid = \"l\"\nchain_ids = 1\nasset = \"native\"\nper_tx_max = 5\n",
    ));
    assert!(
        e.starts_with("p.toml:5:13: `chain_ids`: invalid type: integer `1`, expected a sequence"),
        "{e}"
    );
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nchian_ids = [1]\n",
    ));
    assert!(
        e.starts_with("p.toml:6:1: unknown field `chian_ids`"),
        "{e}"
    );
    assert!(e.ends_with("; did you mean `chain_ids`?"), "{e}");
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nzzzzzz = 1\n",
    ));
    assert!(!e.contains("did you mean"), "{e}");
    assert_eq!(edit_distance("windwo", "window"), 2);
    assert_eq!(
        closest("valu", ["id", "value_max"].into_iter()),
        Some("value_max")
    );
}

#[test]
fn an_unknown_kind_suggests_the_closest() {
    let e = err(&with(
        "[[rule]]\nid = \"a\"\neffect = \"allow\"\nkinds = [\"raw_digset\"]\n",
    ));
    assert!(e.ends_with("; did you mean `raw_digest`?"), "{e}");
}

/// `value_above` and `erc20_amount_above` are exclusive: "above 10 ether" is not 10 ether.
#[test]
fn exclusive_lower_bounds() {
    let policy = with(&format!(
        r#"{}
[[rule]]
id = "big-eth"
effect = "deny"
chain_ids = [1]
value_above = "10 ether"
[[rule]]
id = "big-usdc"
effect = "deny"
chain_ids = [1]
erc20_amount_above = "250000 USDC"
[[rule]]
id = "all"
effect = "allow"
clients = ["c"]
"#,
        assets()
    ));
    let p = Policy::parse("p.toml", &policy).unwrap_or_else(|e| panic!("{e}"));
    let case = |name: &str, action: &str, expect: &str| {
        format!(
            "[[case]]\nname = \"{name}\"\nclient = \"c\"\naction = {{ key = \"k\", chain_id = 1, gas_limit = 65000, max_fee_per_gas = \"1 gwei\", {action} }}\nexpect = \"{expect}\"\n"
        )
    };
    let eth = |v: &str| {
        format!(
            "kind = \"native_transfer\", to = \"0x1111111111111111111111111111111111111111\", value = \"{v}\""
        )
    };
    let usdc = |v: &str| {
        format!(
            "kind = \"erc20_transfer\", to = \"{USDC}\", erc20 = {{ counterparty = \"0x1111111111111111111111111111111111111111\", amount = \"{v}\" }}"
        )
    };
    let cases = [
        case("exactly 10 ether", &eth("10 ether"), "allow"),
        case("1 wei more", &eth("10.000000000000000001 ether"), "deny"),
        case("exactly 250k", &usdc("250000 USDC"), "allow"),
        case("one base unit more", &usdc("250000.000001 USDC"), "deny"),
    ]
    .concat();
    let report = crate::run_tests(&p, &cases).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.is_success(), "{report}");

    // One lower bound per quantity.
    assert_eq!(
        err(&with(
            "[[rule]]\nid = \"r\"\neffect = \"deny\"\nvalue_min = 1\nvalue_above = 1\n"
        )),
        "p.toml:7:15: rule `r`: `value_min` and `value_above` both bound the amount from below; keep one"
    );
    assert!(
        err(&with(
            "[[rule]]\nid = \"r\"\neffect = \"deny\"\nerc20_amount_min = 1\nerc20_amount_above = 1\n"
        ))
        .contains("`erc20_amount_min` and `erc20_amount_above` both bound the amount from below")
    );
    let max = "115792089237316195423570985008687907853269984665640564039457584007913129639935";
    assert!(
        err(&with(&format!(
            "[[rule]]\nid = \"r\"\neffect = \"deny\"\nvalue_above = \"{max}\"\n"
        )))
        .contains("`value_above`: no amount is above the largest one")
    );
}

/// `diff` and `check` read an exclusive bound as the inclusive bound one base unit higher.
#[test]
fn diff_and_check_know_exclusive_bounds() {
    let rule = |bound: &str| {
        with(&format!(
            "[[rule]]\nid = \"pay\"\neffect = \"allow\"\nclients = [\"c\"]\nchain_ids = [1]\nkinds = [\"native_transfer\"]\n{bound}\n"
        ))
    };
    let min = Policy::parse("old.toml", &rule("value_min = \"10 ether\"")).unwrap();
    let above = Policy::parse(
        "new.toml",
        &rule("value_above = \"10 ether\"").replace("serial = 1", "serial = 2"),
    )
    .unwrap();
    let narrower = crate::diff(&min, &above);
    assert!(!narrower.loosens(), "{narrower}");
    assert!(
        narrower
            .to_string()
            .contains("rule `pay`: matchers changed: value_min"),
        "{narrower}"
    );
    let wider = crate::diff(&above, &min);
    assert!(wider.loosens(), "{wider}");
    // Nothing is above 2 ether and at most 2 ether.
    let never = Policy::parse(
        "p.toml",
        &rule("value_above = \"2 ether\"\nvalue_max = \"2 ether\""),
    )
    .unwrap();
    let w: Vec<String> = crate::check(&never)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        w.iter()
            .any(|x| x
                .contains("rule `pay`: can never match: `value_min` is larger than `value_max`")),
        "{w:#?}"
    );
}
