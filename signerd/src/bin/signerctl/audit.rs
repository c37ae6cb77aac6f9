//! `signerctl audit ...`: the auditor's and operator's tools for the audit log.
//!
//! `keygen` and `pubkey` work on the audit signing key named by a configuration file;
//! `verify`, `prove`, `check-proof`, `query` and `tail` only read a log directory (a copy is
//! fine) and never need the daemon or any secret. A failed verification exits non-zero and
//! names the first bad record; nothing here ever modifies a log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::json;
use signerd::audit::key::{self, SoftCheckpointKey};
use signerd_auditor::note::VerifierKey;
use signerd_auditor::prove::{self, InclusionProof};
use signerd_auditor::query::{self, Filter, Follower};
use signerd_auditor::verify::{self, VerifyOptions};

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
    /// Generate the audit log's checkpoint signing key: in `[audit] signing_key_dir`, or in
    /// the PKCS#11 token or Vault server of `[keys]` (`[audit] signing_key_backend`).
    Keygen {
        /// signerd configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the checkpoint verifier key (C2SP vkey: <name>+<key id>+<base64 key>).
    Pubkey {
        /// signerd configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Verify a log directory: records, hash chain, segments, Merkle tree heads, checkpoint
    /// signatures (with --pubkey) and request/result pairing. Exits 1 on the first failure.
    Verify {
        /// The log directory (the daemon's `[audit] dir`, or a copy of it).
        dir: PathBuf,
        #[command(flatten)]
        key: PubkeyArgs,
        /// A checkpoint kept elsewhere (e.g. shipped off the host): the log must contain its
        /// tree. May be repeated.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
    },
    /// Print an inclusion proof (JSON) of record SEQ against the latest checkpoint.
    Prove {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The record's seq (a receipt's `audit_seq`).
        seq: u64,
        #[command(flatten)]
        key: PubkeyArgs,
    },
    /// Check an inclusion proof printed by `prove` (file, or `-` for stdin).
    CheckProof {
        /// The proof file.
        file: PathBuf,
        #[command(flatten)]
        key: PubkeyArgs,
        /// The leaf hash you hold (a receipt's, hex): the proof must be for it.
        #[arg(long)]
        leaf_hash: Option<String>,
    },
    /// Print the records that match every given filter.
    Query {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// Records of requests for this key.
        // `key` is the id of the global client-key option; this one only shares its flag.
        #[arg(long = "key")]
        key_id: Option<String>,
        /// Records of requests by this client.
        #[arg(long)]
        client: Option<String>,
        /// Records with this request id.
        #[arg(long)]
        req_id: Option<String>,
        /// Records of this type, or of a type prefix ending in `*` (`sign.*`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Records written at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Records written before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// `json`: the exact lines (JSON Lines); `table`: one summary line per record.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Print the last records; with -f, keep printing new ones (across segment rotation).
    Tail {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// How many records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing records as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Json,
    Table,
}

#[derive(clap::Args)]
pub(crate) struct PubkeyArgs {
    /// The checkpoint verifier key (C2SP vkey), as printed by `signerctl audit pubkey`.
    #[arg(long, conflicts_with = "pubkey_file")]
    pubkey: Option<String>,
    /// A file holding the verifier key.
    #[arg(long)]
    pubkey_file: Option<PathBuf>,
}

impl PubkeyArgs {
    fn key(&self) -> anyhow::Result<Option<VerifierKey>> {
        let text = match (&self.pubkey, &self.pubkey_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(VerifierKey::parse(&text)?))
    }
}

fn load_config(path: &Path) -> anyhow::Result<signerd::config::Config> {
    Ok(signerd::config::Config::load(path)?)
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), 16 << 20),
            &mut s,
        )?;
        return Ok(s);
    }
    let meta = std::fs::metadata(file).with_context(|| file.display().to_string())?;
    if meta.len() > 16 << 20 {
        bail!("{}: larger than 16 MiB", file.display());
    }
    std::fs::read_to_string(file).with_context(|| file.display().to_string())
}

/// Generates the audit checkpoint key in the `pkcs11` token or `vault` server of `[keys]`.
async fn generate_held(
    cfg: &signerd::config::Config,
    backend: &str,
    name: &str,
) -> anyhow::Result<signerd::keys::KeyInfo> {
    match backend {
        "pkcs11" => {
            let p = cfg
                .keys
                .pkcs11
                .as_ref()
                .context("keys: [keys.pkcs11] is missing")?;
            let pin = p
                .pin_source()
                .read("keys.pkcs11.pin")
                .map_err(anyhow::Error::msg)?;
            let (p, name) = (p.clone(), name.to_owned());
            Ok(tokio::task::spawn_blocking(move || {
                signerd::keys::pkcs11::Pkcs11Backend::generate(
                    &p,
                    &pin,
                    &name,
                    signerd::keys::Algorithm::Ed25519,
                )
            })
            .await??)
        }
        "vault" => {
            let v = cfg
                .keys
                .vault
                .as_ref()
                .context("keys: [keys.vault] is missing")?;
            Ok(signerd::keys::vault::generate_audit_key(v, name).await?)
        }
        other => bail!("audit.signing_key_backend: unknown backend `{other}`"),
    }
}

/// Runs one `signerctl audit` command.
pub(crate) async fn run(cmd: AuditCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Keygen { config } => {
            let cfg = load_config(&config)?;
            let (vkey, place) = match cfg.audit.signing_key_backend.as_str() {
                "soft" => {
                    let pass = key::passphrase(&cfg).map_err(anyhow::Error::msg)?;
                    key::generate(&cfg.audit.signing_key_dir, &pass)?;
                    let k = SoftCheckpointKey::open(
                        &cfg.audit.signing_key_dir,
                        &cfg.audit.origin,
                        &pass,
                    )?;
                    (
                        k.verifier_key()?,
                        cfg.audit.signing_key_dir.display().to_string(),
                    )
                }
                held => {
                    let name = &cfg.audit.signing_key_name;
                    let info = generate_held(&cfg, held, name).await?;
                    (
                        key::held_verifier_key(&info, &cfg.audit.origin)?,
                        format!("the {held} backend, named `{name}`"),
                    )
                }
            };
            if json_out {
                println!("{}", json!({"location": place, "vkey": vkey.to_string()}));
            } else {
                println!("{vkey}");
                eprintln!(
                    "generated the audit signing key in {place}; give the verifier key above to auditors"
                );
            }
            Ok(())
        }
        AuditCmd::Pubkey { config } => {
            let cfg = load_config(&config)?;
            let vkey = match key::backend_spec(&cfg, false) {
                None => {
                    let pass = key::passphrase(&cfg).map_err(anyhow::Error::msg)?;
                    SoftCheckpointKey::open(&cfg.audit.signing_key_dir, &cfg.audit.origin, &pass)?
                        .verifier_key()?
                }
                Some(spec) => {
                    let backend = if cfg.keys.backend == "vault" {
                        signerd::server::open_vault_keys(&cfg, Some(&spec)).await?
                    } else {
                        signerd::server::open_keys(&cfg, Some(&spec))?
                    };
                    let info = backend.audit_key().with_context(|| {
                        format!(
                            "the {} backend holds no audit checkpoint key `{}` (create it with `signerctl audit keygen --config {}`)",
                            backend.name(),
                            spec.name,
                            config.display()
                        )
                    })?;
                    key::held_verifier_key(&info, &cfg.audit.origin)?
                }
            };
            if json_out {
                println!("{}", json!({"vkey": vkey.to_string()}));
            } else {
                println!("{vkey}");
            }
            Ok(())
        }
        AuditCmd::Verify {
            dir,
            key,
            checkpoints,
        } => {
            let mut opts = VerifyOptions {
                key: key.key()?,
                checkpoints: Vec::new(),
            };
            for f in checkpoints {
                opts.checkpoints
                    .push((format!("checkpoint {}", f.display()), read_input(&f)?));
            }
            // Reading and hashing a large log is blocking work.
            let report = tokio::task::spawn_blocking(move || verify::verify_dir(&dir, &opts))
                .await
                .context("verification task")?;
            match report {
                Ok(r) => {
                    print_report(&r, json_out)?;
                    Ok(())
                }
                Err(f) => {
                    if json_out {
                        println!(
                            "{}",
                            json!({"ok": false, "failure": {
                                "location": f.location, "seq": f.seq, "message": f.message}})
                        );
                    }
                    bail!("audit log verification FAILED: {f}")
                }
            }
        }
        AuditCmd::Prove { dir, seq, key } => {
            let key = key.key()?;
            let proof = tokio::task::spawn_blocking(move || prove::prove(&dir, seq))
                .await
                .context("proof task")?
                .map_err(anyhow::Error::msg)?;
            if let Some(k) = &key {
                prove::check(&proof, Some(k)).map_err(anyhow::Error::msg)?;
            }
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(())
        }
        AuditCmd::CheckProof {
            file,
            key,
            leaf_hash,
        } => {
            let key = key.key()?;
            let proof: InclusionProof =
                serde_json::from_str(&read_input(&file)?).context("parsing the proof")?;
            if let Some(want) = leaf_hash {
                let want = want.trim_start_matches("0x").to_ascii_lowercase();
                if want != proof.leaf_hash {
                    bail!("the proof is for leaf hash {}, not {want}", proof.leaf_hash);
                }
            }
            let cp = prove::check(&proof, key.as_ref()).map_err(anyhow::Error::msg)?;
            let signed = match &key {
                Some(k) => format!("signed by {k}"),
                None => "signature NOT checked (give --pubkey)".to_owned(),
            };
            if json_out {
                println!(
                    "{}",
                    json!({"ok": true, "seq": proof.seq, "tree_size": cp.size,
                           "origin": cp.origin, "signature_checked": key.is_some()})
                );
            } else {
                println!(
                    "OK: record {} (leaf {}) is in the tree of {} records of {}; checkpoint {signed}",
                    proof.seq, proof.leaf_hash, cp.size, cp.origin
                );
            }
            Ok(())
        }
        AuditCmd::Query {
            dir,
            key_id,
            client,
            req_id,
            kind,
            since,
            until,
            format,
        } => {
            let filter = Filter {
                key: key_id,
                client,
                req_id,
                kind,
                since,
                until,
            };
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                if let Format::Table = format {
                    writeln!(
                        out,
                        "{:>8}  {:<27}  {:<18}  {:<20}  {:<12}  {:<16}  summary",
                        "seq", "ts", "type", "req_id", "client", "key"
                    )?;
                }
                query::query(&dir, &filter, |row| {
                    let written = match format {
                        Format::Json => writeln!(out, "{}", row.line),
                        Format::Table => writeln!(
                            out,
                            "{:>8}  {:<27}  {:<18}  {:<20}  {:<12}  {:<16}  {}",
                            row.seq,
                            row.ts,
                            row.kind,
                            row.req_id.as_deref().unwrap_or("-"),
                            row.client.as_deref().unwrap_or("-"),
                            row.key.as_deref().unwrap_or("-"),
                            query::summary(&row.line)
                        ),
                    };
                    written.map_err(|e| e.to_string())
                })
                .map_err(anyhow::Error::msg)?;
                out.flush()?;
                Ok(())
            })
            .await
            .context("query task")?
        }
        AuditCmd::Tail { dir, lines, follow } => {
            let (last, mut follower) = Follower::start(&dir, lines).map_err(anyhow::Error::msg)?;
            for l in last {
                println!("{l}");
            }
            if follow {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    for l in follower.poll().map_err(anyhow::Error::msg)? {
                        println!("{l}");
                    }
                    std::io::stdout().flush()?;
                }
            }
            Ok(())
        }
    }
}

fn print_report(r: &verify::Report, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".to_owned(), json!(true));
        }
        println!("{v}");
        return Ok(());
    }
    let s = &r.stats;
    println!(
        "records:      {} (seq 0 to {}) in {} segment(s): {} .. {}",
        s.records,
        r.last_seq.map_or("-".to_owned(), |x| x.to_string()),
        r.segments.len(),
        r.segments.first().map_or("-", String::as_str),
        r.segments.last().map_or("-", String::as_str)
    );
    println!("hash chain:   OK (envelopes, seq without gaps, prev chain, segment chaining)");
    match &r.last_checkpoint {
        Some(c) => println!(
            "checkpoints:  {} OK, origin {}; the last covers {} records, root {}",
            s.checkpoints,
            r.origin.as_deref().unwrap_or("-"),
            c.seq,
            c.root
        ),
        None => println!("checkpoints:  none in the log"),
    }
    match &r.signatures_checked_with {
        Some(k) => println!("signatures:   every checkpoint signature verified with {k}"),
        None => println!(
            "signatures:   NOT checked (give --pubkey with the verifier key from `signerctl audit pubkey`)"
        ),
    }
    println!(
        "checkpoint file: {}; external checkpoints matched: {}",
        if r.checkpoint_file {
            "present and consistent with the log"
        } else {
            "absent"
        },
        r.external_checkpoints
    );
    let results: Vec<String> = s.results.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "requests:     {} ({} allowed, {} denied); results: {}; auth failures: {}",
        s.requests,
        s.allowed,
        s.denied,
        if results.is_empty() {
            "none".to_owned()
        } else {
            results.join(", ")
        },
        s.auth_failures
    );
    println!(
        "restarts:     {} start(s), {} crash recovery record(s)",
        s.starts, s.recoveries
    );
    if r.unattested == 0 {
        println!(
            "unattested:   none (every record is covered by the last checkpoint, except that checkpoint record itself)"
        );
    } else {
        println!(
            "unattested:   {} record(s) after the last checkpoint record, not yet covered by a signed tree head",
            r.unattested
        );
    }
    for p in &r.pending {
        println!(
            "pending:      request {} allowed at seq {} has no result yet (in flight, or recorded as unknown_crash at the next start)",
            p.req_id.as_deref().unwrap_or("null"),
            p.decision_seq
        );
    }
    for w in &r.warnings {
        println!("warning:      {w}");
    }
    println!("OK");
    Ok(())
}
