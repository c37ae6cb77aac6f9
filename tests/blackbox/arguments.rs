//! Argument matchers in the real daemon: a policy that allows Uniswap V3 `exactInputSingle` on
//! the SwapRouter only when the swap pays the signing key itself. The daemon signs the swap to
//! its own address, refuses the same swap paying another address and a swap whose calldata does
//! not decode (PERMISSION_DENIED naming the rule), records the calldata and the key's address in
//! the audit log, and `signerctl audit recheck` re-evaluates those decisions without a
//! difference.

use alloy_consensus::Transaction;
use signerd_proto::v1;
use tonic::Code;

use crate::audit_support::ctl;
use crate::signing::check_transaction;
use crate::util::*;

const ROUTER: &str = "0xE592427A0AEce92De3Edee1F18E0157C05861564";
const USDC: &str = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
const WETH: &str = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2";
const ATTACKER: &str = "0x00000000000000000000000000000000DeaDBeef";

/// Swaps on the router are allowed; any `exactInputSingle` (on any contract) that does not pay
/// the key itself is denied by name.
fn policy() -> String {
    let function = "exactInputSingle((address tokenIn,address tokenOut,uint24 fee,address recipient,uint256 deadline,uint256 amountIn,uint256 amountOutMinimum,uint160 sqrtPriceLimitX96) params)";
    format!(
        r#"version = 1
serial = 1

[[asset]]
chain_id = 1
contract = "{USDC}"
symbol = "USDC"
decimals = 6

[[rule]]
id = "swaps"
effect = "allow"
clients = ["app"]
keys = ["hot"]
chain_ids = [1]
contracts = ["{ROUTER}"]
function = "{function}"
args = [{{ arg = "params.amountIn", max = "10000 USDC", token = "params.tokenIn" }}]

[[rule]]
id = "swap-pays-others"
effect = "deny"
keys = ["hot"]
function = "{function}"
args = [{{ arg = "params.recipient", not_in = ["self"] }}]
"#
    )
}

/// `exactInputSingle` calldata, encoded word by word as the ABI specification says: 1,000
/// USDC in, WETH out, fee 500, to `recipient`.
fn swap_calldata(recipient: &str) -> Vec<u8> {
    let word = |hex: &str| format!("{:0>64}", hex.trim_start_matches("0x").to_lowercase());
    let words = [
        word(USDC),
        word(WETH),
        word(&format!("{:x}", 500)),
        word(recipient),
        word(&format!("{:x}", 1_767_270_000u64)),
        word(&format!("{:x}", 1_000_000_000u64)),
        word(&format!("{:x}", 300_000_000_000_000_000u64)),
        word("0"),
    ];
    hex::decode(format!("414bf389{}", words.concat())).unwrap()
}

fn swap(request_id: &str, data: Vec<u8>) -> v1::SignEvmTransactionRequest {
    v1::SignEvmTransactionRequest {
        to: ROUTER.to_owned(),
        value: "0".to_owned(),
        data,
        gas_limit: 200_000,
        max_fee_per_gas: "30000000000".to_owned(),
        max_priority_fee_per_gas: "1000000000".to_owned(),
        ..eip1559(request_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_is_signed_only_when_it_pays_the_key_itself() {
    let env = TestEnv::with(
        "args-swap",
        Opts {
            policy: policy(),
            ..Opts::default()
        },
    );
    let d = env.start();
    let mut c = env.client(&d, "app").await;
    let me = address_of(&mut c, HOT).await;

    // Recipient = the key's own address: signed, with exactly this calldata.
    let req = swap("swap-self", swap_calldata(&me));
    let resp = c
        .sign_evm_transaction(req.clone())
        .await
        .unwrap()
        .into_inner();
    let tx = check_transaction(&resp, &req, &me);
    assert_eq!(tx.input().as_ref(), req.data.as_slice());

    // The same swap paying someone else: refused, naming the rule.
    let st = refused(
        "swap paying another address",
        c.sign_evm_transaction(swap("swap-attacker", swap_calldata(ATTACKER)))
            .await,
    );
    assert_status(
        "swap paying another address",
        &st,
        Code::PermissionDenied,
        "denied by rule `swap-pays-others`",
    );

    // Calldata with the function's selector that does not decode: indeterminate, so the deny
    // rule denies it (and the allow rule would not allow it).
    let mut short = swap_calldata(&me);
    short.truncate(short.len() - 32);
    let st = refused(
        "truncated swap",
        c.sign_evm_transaction(swap("swap-short", short)).await,
    );
    assert_status(
        "truncated swap",
        &st,
        Code::PermissionDenied,
        "rule `swap-pays-others` (indeterminate: the calldata has the selector of exactInputSingle",
    );

    let audit = env.wait_audit(|a| a.results("swap-short").len() == 1);
    assert_eq!(audit.results("swap-self"), ["signed"]);
    assert_eq!(audit.results("swap-attacker"), ["denied"]);
    check_receipt(&audit, resp.receipt.as_ref(), "swap-self");
    // The decision records what the policy judged: the calldata and the key's address.
    let decision = audit
        .of_type("sign.decision")
        .into_iter()
        .find(|r| r["req_id"] == "swap-attacker")
        .unwrap();
    assert_eq!(
        decision["action"]["calldata"],
        format!("0x{}", hex::encode(swap_calldata(ATTACKER)))
    );
    assert_eq!(
        decision["action"]["signer"].as_str().map(str::to_lowercase),
        Some(me.to_lowercase())
    );
    d.stop();

    // Every decision re-evaluates to what was recorded.
    let out = ctl(&["audit", "recheck", env.audit_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("3 decisions rechecked"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.trim_end().ends_with("OK"), "{}", out.stdout);
}
