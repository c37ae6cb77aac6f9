//! The Prometheus endpoint: it serves on its own plain-HTTP listener, and its counters,
//! histograms and gauges move with what the daemon does.

use std::io::{Read, Write};
use std::time::Duration;

use signerd_proto::v1;

use crate::util::*;

/// `GET path` over a plain TCP connection; the response head and body.
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{out}"));
    (head.to_owned(), body.to_owned())
}

/// `GET /metrics` over a plain TCP connection; the body.
pub(crate) fn scrape(addr: &str) -> String {
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// The value of the sample whose name and labels start with `series` (labels in the order the
/// exporter prints them), or 0 if absent.
pub(crate) fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', ',', '}']))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| {
            v.parse().unwrap_or_else(|_| panic!("{l:?}", l = v))
        })
}

/// The metrics listener's address, from the line signerd prints.
pub(crate) fn metrics_addr(d: &Daemon) -> String {
    assert!(
        d.wait_stdout(
            |l| l.starts_with("signerd metrics on http://"),
            Duration::from_secs(10)
        ),
        "{:?}",
        d.stdout()
    );
    let line = d
        .stdout()
        .into_iter()
        .find(|l| l.starts_with("signerd metrics on http://"))
        .unwrap_or_default();
    line.trim_start_matches("signerd metrics on http://")
        .trim_end_matches("/metrics")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_serve_and_move_with_requests() {
    let env = TestEnv::new("metrics");
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("checkpoint_every_records = 1\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    write_file(&env.config_path(), text.as_bytes(), 0o600);
    let d = env.start();
    assert!(
        d.wait_stdout(
            |l| l.starts_with("signerd metrics on http://"),
            Duration::from_secs(10)
        ),
        "{:?}",
        d.stdout()
    );
    let addr = metrics_addr(&d);

    let before = scrape(&addr);
    // Only /metrics is served.
    for path in ["/", "/health", "/metrics/x"] {
        let (head, _) = get(&addr, path);
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
    }
    assert_eq!(value(&before, "signerd_policy_serial"), 1.0, "{before}");
    assert_eq!(
        value(&before, "signerd_backend_healthy{backend=\"soft\"}"),
        1.0,
        "{before}"
    );
    assert_eq!(value(&before, "signerd_audit_healthy"), 1.0, "{before}");
    assert!(
        value(&before, "signerd_audit_records_total") >= 1.0,
        "{before}"
    );
    let ok =
        "signerd_requests_total{method=\"SignEvmTransaction\",decision=\"allow\",status=\"OK\"}";
    assert_eq!(value(&before, ok), 0.0);

    let mut c = env.client(&d, "app").await;
    for i in 0..3 {
        c.sign_evm_transaction(eip1559(&format!("m-{i}")))
            .await
            .unwrap();
    }
    let denied = c
        .sign_evm_transaction(v1::SignEvmTransactionRequest {
            to: String::new(),
            data: INIT_CODE.to_vec(),
            ..eip1559("m-denied")
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    c.sign_evm_transaction(v1::SignEvmTransactionRequest {
        to: "0xbad".into(),
        ..eip1559("m-bad")
    })
    .await
    .unwrap_err();

    let after = scrape(&addr);
    assert_eq!(value(&after, ok), 3.0, "{after}");
    assert_eq!(
        value(
            &after,
            "signerd_requests_total{method=\"SignEvmTransaction\",decision=\"deny\",status=\"PERMISSION_DENIED\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "signerd_requests_total{method=\"SignEvmTransaction\",decision=\"none\",status=\"INVALID_ARGUMENT\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "signerd_request_duration_seconds_count{method=\"SignEvmTransaction\"}"
        ),
        5.0,
        "{after}"
    );
    for stage in ["policy", "backend", "audit_commit"] {
        let n = value(
            &after,
            &format!("signerd_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(n >= 3.0, "stage {stage}: {n}\n{after}");
    }
    assert!(
        value(&after, "signerd_audit_records_total")
            > value(&before, "signerd_audit_records_total")
    );
    assert!(
        value(&after, "signerd_audit_fsync_duration_seconds_count") >= 3.0,
        "{after}"
    );
    // The approval sweeper publishes the number of waiting requests every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(&addr);
        if body.contains("\nsignerd_pending_approvals 0\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending gauge:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let checkpoint_at = value(&after, "signerd_audit_last_checkpoint_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&checkpoint_at),
        "{checkpoint_at}\n{after}"
    );
    // Labels never carry identifiers: no key id, client id or request id in the text.
    for id in ["m-0", "m-denied", "\"app\"", "\"hot\""] {
        assert!(!after.contains(id), "{id} in metrics");
    }
}

/// `signerctl bench --rate` paces requests (one due every n / rate seconds per client) and
/// refuses rates it cannot mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_paces_at_the_given_rate_and_refuses_bad_rates() {
    let env = TestEnv::new("bench-rate");
    let d = env.start();
    let base = [
        "bench",
        "--key",
        HOT,
        "--concurrency",
        "2",
        "--duration",
        "2",
    ];
    // A `bench` run with `extra` after the base arguments must fail, saying `why`.
    let refused = |extra: &[&str], why: &str| {
        let mut args = base.to_vec();
        args.extend(extra);
        let out = crate::approvals::ctl_as(&env, &d, "app", &args);
        assert!(!out.status.success(), "{extra:?} was accepted: {out:?}");
        assert!(out.stderr.contains(why), "{extra:?}: {}", out.stderr);
    };
    // Several keys must share one algorithm (one request shape per run).
    refused(&["--key", ED], "every --key must have the same algorithm");
    for bad in ["0", "-5", "NaN", "inf", "2000000"] {
        refused(
            &[&format!("--rate={bad}")],
            "--rate must be 1..=1000000 requests per second",
        );
    }
    // A successful `bench --json` run with `extra` after the base arguments.
    let report_of = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend(base);
        args.extend(extra);
        let out = crate::approvals::ctl_as(&env, &d, "app", &args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
    };
    let report = report_of(&["--rate", "40"]);
    assert_eq!(report["offered_per_s"], 40.0, "{report}");
    assert_eq!(report["keys"], 1, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    // 40/s for 2 s: 80 requests are due; a paced run sends no more than that.
    let ok = report["ok"].as_u64().unwrap_or(0);
    assert!(
        (70..=80).contains(&ok),
        "{ok} requests at 40/s for 2 s: {report}"
    );

    // Paced runs compare latencies with the transport floor only.
    refused(
        &["--rate", "40", "--baseline", "soft"],
        "--rate applies to signerd and to --baseline floor only",
    );
    // The floor server runs at the same offered rate; no throughput ratio is claimed.
    let report = report_of(&["--rate", "40", "--baseline", "floor"]);
    let floor = &report["baseline"];
    assert_eq!(floor["offered_per_s"], 40.0, "{report}");
    assert_eq!(floor["errors"], serde_json::json!({}), "{report}");
    for run in [floor, &report] {
        let ok = run["ok"].as_u64().unwrap_or(0);
        assert!((70..=80).contains(&ok), "{ok} at 40/s for 2 s: {report}");
    }
    assert!(report.get("ratio").is_none(), "{report}");
    // Unpaced, the floor's throughput is the baseline of the ratio.
    let report = report_of(&["--baseline", "floor"]);
    let (ours, floor) = (
        report["throughput_per_s"].as_f64().unwrap_or(0.0),
        report["baseline"]["throughput_per_s"]
            .as_f64()
            .unwrap_or(0.0),
    );
    assert!(ours > 0.0 && floor > 0.0, "{report}");
    let ratio = report["ratio"].as_f64().unwrap_or(0.0);
    assert!((ratio - ours / floor).abs() < 1e-9, "{report}");
}
