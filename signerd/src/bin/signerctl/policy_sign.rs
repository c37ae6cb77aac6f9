//! `signerctl policy sign` and `signerctl policy verify-signatures`: a policy administrator
//! signs a policy file (after reading what it changes against the policy in force), and anyone
//! checks offline whether the signatures beside a policy file admit it, exactly as the daemon
//! decides. The administrator's key never leaves this process and is never printed.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use signerd::config::Config;
use signerd::policy_file::{self, Trust};
use signerd_policy::{Governance, Policy};

/// `signerctl policy sign`.
#[derive(Args)]
pub(crate) struct SignArgs {
    /// The daemon's configuration (for the audit log's origin, the trust anchor, the audit
    /// directory and the signature file's place).
    #[arg(long)]
    config: PathBuf,
    /// Your policy administrator key file (as `signerctl approver keygen` writes it).
    #[arg(long)]
    key: PathBuf,
    /// Your administrator name in `[governance]`.
    #[arg(long)]
    name: String,
    /// Compare with this file instead of the policy the audit log loaded last.
    #[arg(long)]
    running: Option<PathBuf>,
    /// The signature file (default: the configured one, `[policy] signatures`).
    #[arg(long)]
    signatures: Option<PathBuf>,
    /// Sign without asking for confirmation.
    #[arg(long)]
    yes: bool,
    /// The policy file to sign.
    file: PathBuf,
}

/// `signerctl policy verify-signatures`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The daemon's configuration.
    #[arg(long)]
    config: PathBuf,
    /// Compare with this file instead of the policy the audit log loaded last.
    #[arg(long)]
    running: Option<PathBuf>,
    /// The signature file (default: the configured one).
    #[arg(long)]
    signatures: Option<PathBuf>,
    /// The policy file (default: the configured one).
    file: Option<PathBuf>,
}

/// The governance in force and the policy it belongs to: `--running`, else the policy the
/// audit log loaded last, else the configured trust anchor (a new deployment).
fn in_force(
    config: &Config,
    trust: &Trust,
    running: Option<&Path>,
) -> anyhow::Result<(Governance, Option<Policy>, String)> {
    if let Some(r) = running {
        let p = policy_file::load_policy(r)?;
        let g = p
            .governance()
            .cloned()
            .unwrap_or_else(|| trust.anchor.clone());
        return Ok((g, Some(p), r.display().to_string()));
    }
    let dir = &config.audit.dir;
    let last = if dir.exists() {
        signerd::state::reconcile::last_policy_hash(dir)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "reading the audit log in {} (or pass --running FILE)",
                    dir.display()
                )
            })?
    } else {
        None
    };
    let shown = match &last {
        Some(h) => format!("the policy the audit log loaded last ({h})"),
        None => "no policy yet: the configured [policy.trust]".to_owned(),
    };
    let (g, p) = policy_file::in_force(dir, last.as_deref(), &trust.anchor)
        .map_err(anyhow::Error::msg)
        .context("or pass --running FILE")?;
    Ok((g, p, shown))
}

fn trust_of(config: &Config, signatures: Option<PathBuf>) -> anyhow::Result<Trust> {
    let mut trust = Trust::from_config(config).map_err(anyhow::Error::msg)?;
    if let Some(s) = signatures {
        trust.signatures = s;
    }
    Ok(trust)
}

/// Says whether the signatures admit the policy; true when they do.
fn report(
    file: &Path,
    policy: &Policy,
    trust: &Trust,
    governance: &Governance,
    in_force: Option<&Policy>,
) -> anyhow::Result<bool> {
    match policy_file::admit(file, policy, trust, governance, in_force) {
        Ok(a) => {
            println!(
                "{}: serial {} sha256 {} loads ({} threshold), signed by {}",
                file.display(),
                policy.serial(),
                policy.hash_hex(),
                a.threshold.as_str(),
                a.signers.join(", ")
            );
            Ok(true)
        }
        Err(e @ policy_file::PolicyFileError::NotAdmitted { .. }) => {
            println!("{e}");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn sign(args: SignArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let trust = trust_of(&config, args.signatures)?;
    let key = crate::approvals::read_key(&args.key)?;
    let (policy, _) = policy_file::load_policy_source(&args.file)?;
    let (governance, running, shown) = in_force(&config, &trust, args.running.as_deref())?;
    let public = key.verifying_key().to_bytes();
    let mine = |g: &Governance| g.administrators().get(&args.name) == Some(&public);
    if !mine(&governance) && !policy.governance().is_some_and(mine) {
        bail!(
            "`{}` with this key is an administrator neither of the governance in force ({governance}) \
             nor of the new policy's; the signature would not count",
            args.name
        );
    }
    println!("origin: {}", trust.origin);
    println!(
        "policy: {} serial {} sha256 {}",
        args.file.display(),
        policy.serial(),
        policy.hash_hex()
    );
    println!("in force: {shown}");
    println!("governance in force: {governance}");
    match &running {
        Some(r) => println!("{}", signerd_policy::diff(r, &policy)),
        None => println!("(no policy in force to compare with: the whole policy is new)"),
    }
    if !args.yes {
        print!("Sign serial {} as `{}`? [y/N] ", policy.serial(), args.name);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not signed");
        }
    }
    let sig = policy_file::sign(&key, &args.name, &trust.origin, &policy);
    let n = policy_file::add_signature(&trust.signatures, sig)?;
    println!(
        "signed: {} now holds {n} signature(s) for this file",
        trust.signatures.display()
    );
    report(&args.file, &policy, &trust, &governance, running.as_ref())?;
    Ok(())
}

pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let trust = trust_of(&config, args.signatures)?;
    let file = args.file.unwrap_or_else(|| config.policy.file.clone());
    let (policy, _) = policy_file::load_policy_source(&file)?;
    let (governance, running, _) = in_force(&config, &trust, args.running.as_deref())?;
    if !report(&file, &policy, &trust, &governance, running.as_ref())? {
        bail!("{} would not load", file.display());
    }
    Ok(())
}
