//! An auditor builds and reads this crate without signerd, so what it depends on stays small:
//! nothing that reaches a key backend (PKCS#11, Vault), the network, RPC or an async runtime,
//! and no new direct dependency without a decision (this test names the ones allowed).
//!
//! The dependency tree is read from the workspace's `Cargo.lock` (every crate the crate's
//! normal dependencies can pull in, whatever their features), and from `cargo tree -e normal`
//! (what a build of the crate alone really compiles).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates the auditor must never depend on, directly or not (a prefix ending in `-` stands
/// for a family: `alloy-` is every alloy crate).
const FORBIDDEN: &[&str] = &[
    "alloy-",
    "axum",
    "cryptoki",
    "h2",
    "hyper",
    "k256",
    "openssl",
    "p256",
    "prost",
    "reqwest",
    "ring",
    "rustify",
    "rustls",
    "secp256k1",
    "signerd",
    "signerd-policy",
    "signerd-proto",
    "sled",
    "tokio",
    "tonic",
    "tonic-",
    "tower",
    "vaultrs",
];

/// The direct dependencies allowed (package names).
const DIRECT: &[&str] = &[
    "base64",
    "const-hex",
    "ed25519-dalek",
    "humantime",
    "rustix",
    "serde",
    "serde_json",
    "sha2",
    "thiserror",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn toml(path: &Path) -> toml::Table {
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

fn forbidden(name: &str) -> bool {
    FORBIDDEN
        .iter()
        .any(|f| name == *f || (f.ends_with('-') && name.starts_with(f)))
}

/// The package names of this crate's `[dependencies]` (a workspace dependency may rename its
/// package: `hex = { package = "const-hex" }`).
fn direct() -> BTreeSet<String> {
    let manifest = toml(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    let workspace = toml(&root().join("Cargo.toml"));
    let shared = &workspace["workspace"]["dependencies"];
    manifest["dependencies"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(name, spec)| {
            let spec = if spec.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
                &shared[name]
            } else {
                spec
            };
            spec.get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// Every package `Cargo.lock` says the packages `from` can pull in, `from` included.
fn closure(from: &BTreeSet<String>) -> BTreeSet<String> {
    let lock = toml(&root().join("Cargo.lock"));
    // name -> [(version, dependencies)]
    let mut packages: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for p in lock["package"].as_array().unwrap() {
        let deps = p
            .get("dependencies")
            .and_then(toml::Value::as_array)
            .map(|d| d.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        packages
            .entry(p["name"].as_str().unwrap().to_owned())
            .or_default()
            .push((p["version"].as_str().unwrap().to_owned(), deps));
    }
    // A dependency is `name` or `name version` (or `name version (source)`) when several
    // versions are locked.
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, Option<String>)> = from.iter().map(|n| (n.clone(), None)).collect();
    while let Some((name, version)) = todo.pop() {
        let key = format!("{name} {}", version.as_deref().unwrap_or("*"));
        if !seen.insert(key) {
            continue;
        }
        let versions = packages
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
        for (v, deps) in versions {
            if version.as_ref().is_some_and(|want| want != v) {
                continue;
            }
            for d in deps {
                let mut parts = d.split(' ');
                let n = parts.next().unwrap().to_owned();
                todo.push((n, parts.next().map(str::to_owned)));
            }
        }
    }
    seen.into_iter()
        .map(|k| k.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn direct_dependencies_are_the_allowed_ones() {
    let want: BTreeSet<String> = DIRECT.iter().map(|d| (*d).to_owned()).collect();
    assert_eq!(
        direct(),
        want,
        "signerd-auditor's [dependencies] changed: auditors build this crate alone; keep it \
         small, and update DIRECT in this test once the new dependency was reviewed"
    );
}

#[test]
fn nothing_in_cargo_lock_reaches_a_forbidden_crate() {
    let all = closure(&direct());
    let bad: Vec<&String> = all.iter().filter(|n| forbidden(n)).collect();
    assert!(
        bad.is_empty(),
        "signerd-auditor's dependencies reach {bad:?} (all of them: {all:?})"
    );
    // Today 85: the lock also lists what features turned on by other members of the
    // workspace, and other platforms, pull in. A jump means something large came in.
    assert!(all.len() < 120, "{} crates: {all:?}", all.len());
}

/// `cargo tree -e normal` of the crate alone: what building it really compiles.
#[test]
fn cargo_tree_of_the_crate_has_no_forbidden_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "-p",
            "signerd-auditor",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--offline",
            "--locked",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tree: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert!(tree.contains("ed25519-dalek"), "{tree:?}");
    let bad: Vec<&String> = tree.iter().filter(|n| forbidden(n)).collect();
    assert!(
        bad.is_empty(),
        "cargo tree -p signerd-auditor -e normal has {bad:?}"
    );
    // Today 36 crates, proc macros included.
    assert!(tree.len() < 50, "{} crates: {tree:?}", tree.len());
    // Cargo.lock's view includes whatever features other members turn on, so it holds at
    // least what the crate alone compiles.
    let all = closure(&direct());
    let missing: Vec<&String> = tree
        .iter()
        .filter(|n| *n != "signerd-auditor" && !all.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the Cargo.lock closure: {missing:?}"
    );
}
