//! What the state store costs a signing request: the idempotency lookup of a new request id,
//! then the write of its answer, against a store that already holds many answers.
//!
//! Baseline, in the same run: a plain sled `get` and `insert` of the same keys and the same
//! encoded values on a tree holding as many, which is the least any store on sled can cost.
//! The lookup and the write are timed together: sled does part of its tree upkeep in whichever
//! call touches a node after a write, so timing either alone shows where the work landed, not
//! what it cost. Run with `cargo bench -p signerd --bench state`; `STORED=n` sets how many
//! answers each store holds first (1 to 10,000,000; default 200,000), `CACHE_BYTES=n` the
//! store's page cache (`[state] cache_bytes`, default 16 MiB; the baseline keeps sled's
//! default of 1 GiB), so that a retry's lookup can be timed from the cache and from the files.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::Criterion;
use signerd::state::{StoredOutcome, StoredRequest};

fn stored_answer() -> StoredRequest {
    // As large as a stored EIP-191 answer: an encoded response of 218 bytes (signature,
    // signing hash, receipt), in hex.
    StoredRequest {
        fingerprint: "ab".repeat(32),
        method: "SignEvmMessage".to_owned(),
        outcome: StoredOutcome::Signed {
            response: "5a".repeat(218),
        },
        answered_at: Some(1_800_000_000),
    }
}

fn main() {
    let stored: usize = match std::env::var("STORED") {
        Err(_) => 200_000,
        Ok(v) => match v.parse() {
            Ok(n) if (1..=10_000_000).contains(&n) => n,
            _ => {
                eprintln!("STORED must be a whole number from 1 to 10000000, got {v:?}");
                std::process::exit(2);
            }
        },
    };
    let cache_bytes: u64 = match std::env::var("CACHE_BYTES") {
        Err(_) => signerd::state::DEFAULT_CACHE_BYTES,
        Ok(v) => match v.parse() {
            Ok(n) if n >= 1 << 20 => n,
            _ => {
                eprintln!("CACHE_BYTES must be a whole number of at least 1048576, got {v:?}");
                std::process::exit(2);
            }
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let answer = stored_answer();
    let value = serde_json::to_vec(&answer).unwrap();

    let store =
        signerd::state::SledStore::open_with_cache(&dir.path().join("store"), cache_bytes).unwrap();
    let raw = sled::open(dir.path().join("raw")).unwrap();
    let tree = raw.open_tree("requests").unwrap();
    for i in 0..stored {
        let id = format!("bench-{i:08}");
        store.put_request("app", &id, &answer).unwrap();
        tree.insert(format!("app\0{id}").as_bytes(), value.clone())
            .unwrap();
    }
    eprintln!(
        "each store holds {stored} answers of {} bytes; the store's cache: {cache_bytes} bytes",
        value.len()
    );

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group(format!("new request: lookup + write ({stored} stored)"));
    let mut n = 0u64;
    g.bench_function("baseline: sled get + insert", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("app\0new-{n}");
            black_box(tree.get(key.as_bytes()).unwrap());
            tree.insert(key.as_bytes(), value.clone()).unwrap();
        })
    });
    // As the service does for a new request id: no answer, so it asks for an expiry marker.
    g.bench_function("StateStore get_request + expired + put_request", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("new-{n}");
            black_box(store.get_request("app", &id).unwrap());
            black_box(store.expired("app", &id).unwrap());
            store.put_request("app", &id, &answer).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!(
        "retry: lookup of a stored answer ({stored} stored)"
    ));
    let mut i = 0usize;
    g.bench_function("StateStore get_request", |b| {
        b.iter(|| {
            i = (i + 7919) % stored;
            let id = format!("bench-{i:08}");
            black_box(store.get_request("app", &id).unwrap())
        })
    });
    g.finish();
    c.final_summary();

    // What expiry markers cost on disk: a fresh store holding only markers, by the blocks its
    // files take once flushed (sled's segments, what is not yet reclaimed included).
    const MARKERS: usize = 1_000_000;
    let markers_dir = dir.path().join("markers");
    let markers = signerd::state::SledStore::open(&markers_dir).unwrap();
    markers.flush().unwrap();
    let before = dir_bytes(&markers_dir);
    for i in 0..MARKERS {
        markers
            .put_expired("app", &format!("expired-{i:08}"), 1_800_000_000)
            .unwrap();
    }
    markers.flush().unwrap();
    let after = dir_bytes(&markers_dir);
    eprintln!(
        "{MARKERS} expiry markers (client id 3 bytes, request ids 16 bytes): the store's files \
         take {} more bytes on disk, {} bytes per marker",
        after.saturating_sub(before),
        after.saturating_sub(before) / MARKERS as u64
    );
}

/// The bytes the files under `dir` take on disk (allocated blocks).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}
