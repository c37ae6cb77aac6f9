//! Signed policies: governance parsing, the signed message, signature files and admission.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::{Signer, SigningKey};

use super::*;

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn pk(n: u8) -> String {
    format!("ed25519:{}", hex::encode(key(n).verifying_key().to_bytes()))
}

/// A policy with `[governance]` of administrators a (1), b (2), c (3).
fn policy(serial: u64, threshold: u32, tighten: u32, extra: &str) -> (Policy, String) {
    let src = format!(
        "version = 1\nserial = {serial}\n\n[[rule]]\nid = \"r\"\neffect = \"allow\"\nkeys = [\"hot\"]\n{extra}\n\
         [governance]\nthreshold = {threshold}\ntighten_threshold = {tighten}\n\
         administrators = {{ a = \"{}\", b = \"{}\", c = \"{}\" }}\n",
        pk(1),
        pk(2),
        pk(3)
    );
    (Policy::parse("p.toml", &src).unwrap(), src)
}

fn sign(name: &str, n: u8, origin: &str, p: &Policy) -> PolicySignature {
    let msg = signing_message(origin, p.serial(), &p.hash());
    PolicySignature {
        administrator: name.into(),
        public_key: key(n).verifying_key().to_bytes(),
        serial: p.serial(),
        sha256: p.hash(),
        signature: key(n).sign(&msg).to_bytes(),
    }
}

fn admit_with(
    g: &Governance,
    old: Option<&Policy>,
    new: &Policy,
    sigs: &[PolicySignature],
) -> Result<Admitted, Refused> {
    admit(&Candidate {
        governance: g,
        in_force: old,
        new,
        origin: "prod",
        signatures: sigs,
    })
}

#[test]
fn the_signed_message_is_exactly_as_documented() {
    let msg = signing_message("signerd.example/prod", 7, &[0xab; 32]);
    assert_eq!(
        String::from_utf8(msg).unwrap(),
        format!(
            "signerd policy signature v1\norigin signerd.example/prod\nserial 7\nsha256 {}\n",
            "ab".repeat(32)
        )
    );
}

#[test]
fn governance_errors_name_line_and_column() {
    let bad = |gov: &str| {
        let src = format!("version = 1\nserial = 1\n\n[governance]\n{gov}\n");
        Policy::parse("p.toml", &src).unwrap_err().to_string()
    };
    let e = bad(&format!(
        "threshold = 3\ntighten_threshold = 1\nadministrators = {{ a = \"{}\", b = \"{}\" }}",
        pk(1),
        pk(2)
    ));
    assert!(
        e.starts_with("p.toml:5:13: governance: `threshold` is 3"),
        "{e}"
    );
    let e = bad(&format!(
        "threshold = 1\ntighten_threshold = 2\nadministrators = {{ a = \"{}\", b = \"{}\" }}",
        pk(1),
        pk(2)
    ));
    assert!(
        e.starts_with("p.toml:6:21: governance: `tighten_threshold` is 2"),
        "{e}"
    );
    let e = bad(&format!(
        "threshold = 1\ntighten_threshold = 1\nadministrators = {{ a = \"{}\", b = \"{}\" }}",
        pk(1),
        pk(1)
    ));
    assert!(e.contains("`a` and `b` have the same key"), "{e}");
    let e = bad("threshold = 1\ntighten_threshold = 1\nadministrators = { a = \"ed25519:00\" }");
    assert!(e.starts_with("p.toml:7:"), "{e}");
    let e = bad("threshold = 1\ntighten_threshold = 0\nadministrators = {}");
    assert!(e.contains("`administrators` is empty"), "{e}");
    let e = bad("threshold = 1\ntighten_threshold = 1\nadmins = {}");
    assert!(e.starts_with("p.toml:"), "{e}");
    let (p, _) = policy(1, 2, 1, "");
    let g = p.governance().unwrap();
    assert_eq!((g.threshold(), g.tighten_threshold()), (2, 1));
    assert_eq!(g.administrators().len(), 3);
}

#[test]
fn full_quorum_loads_and_one_less_is_refused() {
    let (old, _) = policy(1, 2, 1, "");
    let (new, _) = policy(
        2,
        2,
        1,
        "[[rule]]\nid = \"more\"\neffect = \"allow\"\nkeys = [\"cold\"]\n",
    );
    let g = old.governance().unwrap();
    let one = [sign("a", 1, "prod", &new)];
    let r = admit_with(g, Some(&old), &new, &one).unwrap_err();
    assert!(r.reason.contains("found 1 of the 2 needed"), "{}", r.reason);
    assert!(r.reason.contains("loosens the policy"), "{}", r.reason);
    assert_eq!(r.signers, ["a"]);
    let two = [sign("a", 1, "prod", &new), sign("c", 3, "prod", &new)];
    let ok = admit_with(g, Some(&old), &new, &two).unwrap();
    assert_eq!(ok.threshold, Threshold::Full);
    assert_eq!(ok.signers, ["a", "c"]);
}

#[test]
fn replays_duplicates_and_strangers_do_not_count() {
    let (old, _) = policy(1, 2, 1, "");
    let (new, _) = policy(
        2,
        2,
        1,
        "[[rule]]\nid = \"more\"\neffect = \"allow\"\nkeys = [\"cold\"]\n",
    );
    let g = old.governance().unwrap();
    let a = sign("a", 1, "prod", &new);
    let cases: Vec<(PolicySignature, &str)> = vec![
        (
            sign("b", 2, "staging", &new),
            "does not verify for origin `prod`",
        ),
        (sign("b", 2, "prod", &old), "signed sha256"),
        (a.clone(), "signed twice; counted once"),
        (sign("m", 9, "prod", &new), "`m` (ed25519:"),
        // A real administrator's name with a stranger's key.
        (
            sign("b", 9, "prod", &new),
            "is not an administrator with that key",
        ),
    ];
    for (second, needle) in cases {
        let r = admit_with(g, Some(&old), &new, &[a.clone(), second]).unwrap_err();
        assert!(r.reason.contains(needle), "{needle}: {}", r.reason);
        assert!(r.reason.contains("found 1 of the 2"), "{}", r.reason);
    }
    // Another serial in the entry, with a signature made over it.
    let mut other = sign("b", 2, "prod", &new);
    other.serial = 3;
    other.signature = key(2)
        .sign(&signing_message("prod", 3, &new.hash()))
        .to_bytes();
    let r = admit_with(g, Some(&old), &new, &[a.clone(), other]).unwrap_err();
    assert!(
        r.reason
            .contains("signed serial 3, not the file's serial 2"),
        "{}",
        r.reason
    );
    let r = admit_with(g, Some(&old), &new, &[]).unwrap_err();
    assert!(r.reason.contains("holds no signatures"), "{}", r.reason);
}

#[test]
fn a_tightening_change_needs_only_the_tighten_threshold() {
    let (old, _) = policy(1, 2, 1, "");
    let (freeze, _) = policy(
        2,
        2,
        1,
        "[[rule]]\nid = \"freeze\"\neffect = \"deny\"\nkeys = [\"hot\"]\n",
    );
    let g = old.governance().unwrap();
    let ok = admit_with(g, Some(&old), &freeze, &[sign("b", 2, "prod", &freeze)]).unwrap();
    assert_eq!(ok.threshold, Threshold::Tighten);
    assert_eq!(ok.signers, ["b"]);
    // Without a policy in force to compare with, only the full quorum loads.
    let r = admit_with(g, None, &freeze, &[sign("b", 2, "prod", &freeze)]).unwrap_err();
    assert!(r.reason.contains("no policy is in force"), "{}", r.reason);
    // The same signer on a loosening change is refused.
    let (loose, _) = policy(
        2,
        2,
        1,
        "[[rule]]\nid = \"more\"\neffect = \"allow\"\nkeys = [\"cold\"]\n",
    );
    let r = admit_with(g, Some(&old), &loose, &[sign("b", 2, "prod", &loose)]).unwrap_err();
    assert!(r.reason.contains("rule `more`: added"), "{}", r.reason);
    // Lowering the thresholds is a governance change: never a tightening.
    let (lower, _) = policy(
        2,
        1,
        1,
        "[[rule]]\nid = \"freeze\"\neffect = \"deny\"\nkeys = [\"hot\"]\n",
    );
    let r = admit_with(g, Some(&old), &lower, &[sign("b", 2, "prod", &lower)]).unwrap_err();
    assert!(r.reason.contains("changes the governance"), "{}", r.reason);
    assert!(crate::diff(&old, &lower).loosens());
}

#[test]
fn rotation_needs_the_old_quorum_and_the_new_one() {
    let (old, _) = policy(1, 2, 1, "");
    let g = old.governance().unwrap();
    let src = format!(
        "version = 1\nserial = 2\n\n[[rule]]\nid = \"r\"\neffect = \"allow\"\nkeys = [\"hot\"]\n\n\
         [governance]\nthreshold = 2\ntighten_threshold = 1\n\
         administrators = {{ a = \"{}\", d = \"{}\", e = \"{}\" }}\n",
        pk(1),
        pk(4),
        pk(5)
    );
    let new = Policy::parse("p.toml", &src).unwrap();
    let old_quorum = [sign("a", 1, "prod", &new), sign("b", 2, "prod", &new)];
    let r = admit_with(g, Some(&old), &new, &old_quorum).unwrap_err();
    assert!(
        r.reason.contains("also needs 2 signatures of its own"),
        "{}",
        r.reason
    );
    let new_quorum = [sign("d", 4, "prod", &new), sign("e", 5, "prod", &new)];
    let r = admit_with(g, Some(&old), &new, &new_quorum).unwrap_err();
    assert!(
        r.reason
            .contains("needs 2 signatures of the administrators in force"),
        "{}",
        r.reason
    );
    let both = [
        sign("a", 1, "prod", &new),
        sign("b", 2, "prod", &new),
        sign("d", 4, "prod", &new),
    ];
    let ok = admit_with(g, Some(&old), &new, &both).unwrap();
    assert_eq!(ok.threshold, Threshold::Full);
    assert_eq!(ok.signers, ["a", "b", "d"]);
}

#[test]
fn a_policy_without_governance_is_refused() {
    let (old, _) = policy(1, 1, 1, "");
    let bare = Policy::parse("p.toml", "version = 1\nserial = 2\n").unwrap();
    assert!(bare.governance().is_none());
    let r = admit_with(
        old.governance().unwrap(),
        Some(&old),
        &bare,
        &[sign("a", 1, "prod", &bare)],
    )
    .unwrap_err();
    assert!(
        r.reason.contains("has no [governance] table"),
        "{}",
        r.reason
    );
}

#[test]
fn signature_files_round_trip_and_errors_are_located() {
    let (p, _) = policy(1, 2, 1, "");
    let s = [sign("a", 1, "prod", &p), sign("b", 2, "prod", &p)];
    let text: String = s.iter().map(|s| s.to_toml() + "\n").collect();
    assert_eq!(parse_signatures("p.toml.sig", &text).unwrap(), s);
    assert_eq!(parse_signatures("p.toml.sig", "").unwrap(), []);
    let e = parse_signatures(
        "p.toml.sig",
        &text.replace("serial = 1", "serial = 1\nextra = 1"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("p.toml.sig:5:1:"), "{e}");
    let bad_sig = text.replacen(&hex::encode(s[0].signature), "00", 1);
    let e = parse_signatures("p.toml.sig", &bad_sig)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("p.toml.sig:6:13: `signature` must be 128 hex digits"),
        "{e}"
    );
    let big = "#".repeat(MAX_SIGNATURE_FILE_BYTES + 1);
    assert!(matches!(
        parse_signatures("p.toml.sig", &big),
        Err(PolicyError::TooLarge { .. })
    ));
    let many: String = std::iter::repeat_n(s[0].to_toml(), MAX_SIGNATURES + 1).collect();
    let e = parse_signatures("p.toml.sig", &many)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 64 signatures"), "{e}");
}
