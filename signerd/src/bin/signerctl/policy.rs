//! `signerctl policy`: tools for the people who own the policy. They read files only and
//! never talk to a daemon, so they run the same engine the daemon runs, anywhere.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use signerd_policy::{MAX_POLICY_BYTES, Policy, counted};

#[derive(Subcommand)]
pub(crate) enum PolicyCmd {
    /// Validate a policy file (errors with file:line:column) and warn about rules that can
    /// never match or are shadowed by a deny.
    Check {
        /// The policy file (default with `--config`: the configuration's `policy.file`).
        #[arg(required_unless_present = "config")]
        file: Option<PathBuf>,
        /// A daemon configuration: also refuse rules and limits naming keys its key backend
        /// does not hold (the soft keystore is listed offline; a PKCS#11 token or Vault
        /// cannot be, which the output says).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a test-case file against a policy; exits non-zero on any mismatch.
    Test {
        /// The policy file.
        file: PathBuf,
        /// The cases (`[[case]]` entries, see docs/policy.md).
        cases: PathBuf,
    },
    /// Explain how the policy decides each request of a case file: which rules matched, which
    /// did not and why, which limit decided.
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The requests, in the test-case format.
        request: PathBuf,
        /// Take the first loads of address-book entries (cooling-off) from the last
        /// `policy.load` of this audit log directory.
        #[arg(long, value_name = "DIR")]
        audit: Option<PathBuf>,
        /// Take every address-book entry as first loaded at this RFC 3339 time (or, with
        /// --audit, every entry the log does not list).
        #[arg(long, value_name = "TIME")]
        loaded_at: Option<String>,
    },
    /// List what changed between two policies and say whether anything was loosened; exits 1
    /// when the new policy loosens the old one.
    Diff {
        /// The running policy.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
    },
    /// Sign a policy file as a policy administrator: shows what it changes against the policy
    /// in force, asks, and adds the signature to the signature file beside it.
    Sign(crate::policy_sign::SignArgs),
    /// Check offline whether the signatures beside a policy file let the daemon load it.
    VerifySignatures(crate::policy_sign::VerifyArgs),
}

fn read_bounded(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    if meta.len() > MAX_POLICY_BYTES as u64 {
        bail!(
            "{}: {} bytes, more than the {MAX_POLICY_BYTES} allowed",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| path.display().to_string())
}

fn load(path: &Path) -> anyhow::Result<Policy> {
    Ok(Policy::parse(
        &path.display().to_string(),
        &read_bounded(path)?,
    )?)
}

/// `policy check --config`: refuses a policy naming keys the configured backend does not
/// hold, as the daemon would. Returns why the keys could not be listed offline, if so.
fn check_keys_offline(
    config: &signerd::config::Config,
    policy: &Policy,
) -> anyhow::Result<Option<String>> {
    use signerd::config::Backend;
    let held = match config.keys.backend {
        Backend::Soft => {
            let Some(soft) = &config.keys.soft else {
                bail!("{}: [keys.soft] is missing", config.source.display());
            };
            signerd::keys::soft::list_ids(&soft.dir)?
        }
        Backend::Pkcs11 => {
            return Ok(Some(
                "keys not checked: the pkcs11 backend's keys are in the token, which cannot be listed offline; signerd checks them when it loads the policy".into(),
            ));
        }
        Backend::Vault => {
            return Ok(Some(
                "keys not checked: the vault backend's keys are in Vault transit, which cannot be listed offline; signerd checks them when it loads the policy".into(),
            ));
        }
    };
    let unknown = policy.unknown_keys(&held.into_iter().collect());
    if !unknown.is_empty() {
        let lines: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        bail!("{}", lines.join("\n"));
    }
    Ok(None)
}

/// The last line of `policy check`.
fn check_summary(file: &Path, policy: &Policy, warnings: usize) -> String {
    format!(
        "{}: OK (serial {}, {}, {}, sha256 {})",
        file.display(),
        policy.serial(),
        counted(policy.rules().len() as u64, "rule", "rules"),
        counted(warnings as u64, "warning", "warnings"),
        policy.hash_hex()
    )
}

pub(crate) fn run(cmd: PolicyCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Check { file, config } => {
            let config = config
                .map(|c| signerd::config::Config::load(&c).with_context(|| c.display().to_string()))
                .transpose()?;
            let Some(file) = file.or_else(|| config.as_ref().map(|c| c.policy.file.clone())) else {
                bail!("name a policy file, or a configuration with --config");
            };
            let policy = load(&file)?;
            let keys_note = match &config {
                None => None,
                Some(c) => check_keys_offline(c, &policy)?,
            };
            let warnings = signerd_policy::check(&policy);
            let selectors: Vec<String> = signerd_policy::signatures(&policy)
                .iter()
                .map(ToString::to_string)
                .collect();
            if json_out {
                let list: Vec<String> = warnings.iter().map(ToString::to_string).collect();
                let out = serde_json::json!({
                    "file": file.display().to_string(),
                    "serial": policy.serial(),
                    "hash": policy.hash_hex(),
                    "rules": policy.rules().len(),
                    "warnings": list,
                    "keys_not_checked": keys_note,
                    "selectors": selectors,
                });
                println!("{out:#}");
            } else {
                if let Some(note) = &keys_note {
                    println!("note: {note}");
                }
                for s in &selectors {
                    println!("selector: {s}");
                }
                for w in &warnings {
                    println!("warning: {w}");
                }
                println!("{}", check_summary(&file, &policy, warnings.len()));
            }
            Ok(())
        }
        PolicyCmd::Test { file, cases } => {
            let policy = load(&file)?;
            let src = read_bounded(&cases)?;
            let report =
                signerd_policy::run_test_file(&policy, &cases.display().to_string(), &src)?;
            // The report ends with its summary line.
            println!("{report}");
            if !report.is_success() {
                bail!(
                    "{} of {} failed",
                    report.failed(),
                    counted(report.results.len() as u64, "case", "cases")
                );
            }
            Ok(())
        }
        PolicyCmd::Explain {
            file,
            request,
            audit,
            loaded_at,
        } => {
            let mut policy = load(&file)?;
            if let Some(note) = crate::books::attach_first_loads(
                &mut policy,
                audit.as_deref(),
                loaded_at.as_deref(),
            )? {
                println!("{note}");
            }
            let src = read_bounded(&request)?;
            let report =
                signerd_policy::run_test_file(&policy, &request.display().to_string(), &src)?;
            for s in signerd_policy::signatures(&policy) {
                println!("selector: {s}");
            }
            for r in &report.results {
                println!("{}: {}", r.name, r.decision.as_str());
                for line in &r.explanation {
                    println!("  {line}");
                }
                if !r.passed {
                    println!("  (the file expected {})", r.expected);
                }
            }
            Ok(())
        }
        PolicyCmd::Sign(args) => crate::policy_sign::sign(args),
        PolicyCmd::VerifySignatures(args) => crate::policy_sign::verify(args),
        PolicyCmd::Diff { old, new } => {
            let (old_policy, new_policy) = (load(&old)?, load(&new)?);
            let report = signerd_policy::diff(&old_policy, &new_policy);
            println!("{report}");
            // A policy the daemon would refuse to load must not pass a review gate either (an
            // identical file is not refused: reloading it changes nothing).
            let refused = !report.serial_increases() && old_policy.hash() != new_policy.hash();
            let serial = refused.then(|| {
                format!(
                    "{}: serial {} is not higher than the serial {} of {}; the daemon refuses to load it: raise `serial`",
                    new.display(),
                    report.new_serial,
                    report.old_serial,
                    old.display()
                )
            });
            match (report.loosens(), serial) {
                (true, Some(s)) => bail!("{} loosens {}; and {s}", new.display(), old.display()),
                (true, None) => bail!("{} loosens {}", new.display(), old.display()),
                (false, Some(s)) => bail!("{s}"),
                (false, None) => {}
            }
            println!("nothing is loosened");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn counts_are_pluralized() {
        let src = "version = 1\nserial = 3\n[[rule]]\nid = \"r\"\neffect = \"deny\"\n";
        let policy = signerd_policy::Policy::parse("p.toml", src).unwrap();
        let line = super::check_summary(std::path::Path::new("p.toml"), &policy, 1);
        assert!(
            line.starts_with("p.toml: OK (serial 3, 1 rule, 1 warning, sha256 "),
            "{line}"
        );
        let line = super::check_summary(std::path::Path::new("p.toml"), &policy, 2);
        assert!(line.contains(", 1 rule, 2 warnings,"), "{line}");
    }
}
