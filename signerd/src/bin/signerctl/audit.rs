//! `signerctl audit ...`: the auditor's and operator's tools for the audit log.
//!
//! `keygen` and `pubkey` work on the audit signing key named by a configuration file;
//! `verify`, `prove`, `check-proof`, `query`, `tail` and `recheck` only read a log directory (a copy is
//! fine) and never need the daemon or any secret. A failed verification exits non-zero and
//! names the first bad record; nothing here ever modifies a log. Those five run the commands
//! of the auditor crate ([`signerd_auditor::commands`]), as its own binary `signerd-auditor`
//! does, so both print the same. `verify` over the logs of several replicas runs
//! [`signerd_auditor::replicas`].

use signerd::config::Backend;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::json;
use signerd::audit::key::{self, SoftCheckpointKey};
use signerd_auditor::commands::{self, CommandError};
use signerd_auditor::note::VerifierKey;
use signerd_auditor::query::Filter;
use signerd_auditor::{replicas, witnessed};

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
    /// Given the logs of several replicas, verify each (with the --pubkey named by its
    /// origin), then that no two share an origin and no request id was signed as two
    /// different requests.
    Verify {
        /// The log directory (the daemon's `[audit] dir`, or a copy of it); several for the
        /// logs of several replicas.
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        key: VerifyKeyArgs,
        /// A checkpoint kept elsewhere (e.g. shipped off the host): the log must contain its
        /// tree. May be repeated.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// A checkpoint verified before: the log must be consistent with it (still hold its
        /// tree), and only the records appended since are checked in full.
        #[arg(long, value_name = "FILE")]
        since: Option<PathBuf>,
        /// The log is being written: records after the last checkpoint are reported instead of
        /// failing the verification.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Print an RFC 6962 consistency proof (JSON) from the checkpoint in file OLD to the one in
    /// NEW (default: the log's latest), after checking both against the log.
    Consistency {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The older checkpoint (a copy of the `checkpoint` file).
        old: PathBuf,
        /// The newer checkpoint; default: the latest in the log.
        new: Option<PathBuf>,
        #[command(flatten)]
        key: PubkeyArgs,
    },
    /// Check a consistency proof printed by `consistency` (file, or `-` for stdin).
    CheckConsistency {
        /// The proof file.
        file: PathBuf,
        #[command(flatten)]
        key: PubkeyArgs,
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
    /// Re-evaluate every recorded decision with the policies archived beside the log
    /// (`<dir>/policies`), rebuilding spend in log order; print each decision (or vote) the
    /// recorded policy would not have made. Exits 1 if there is one, or if a policy the log
    /// names is missing from the archive or altered.
    Recheck {
        /// The log directory (the daemon's `[audit] dir`, or a copy of it).
        dir: PathBuf,
        /// A policy file to use besides the archive, under its own hash (e.g. one loaded
        /// before the archive existed). May be repeated.
        #[arg(long = "policy", value_name = "FILE")]
        policies: Vec<PathBuf>,
    },
    /// Snapshots of the state the daemon derives from the log (`DIR/snapshots/`).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Append realistic generated records (requests, decisions with limit charges, results,
    /// approvals) to the log of a configuration, with the real writer and audit key: for
    /// start-up benchmarks only. Never on a production log.
    #[command(hide = true)]
    Generate {
        /// signerd configuration (its `[audit]` directory, key and segment size are used).
        #[arg(long)]
        config: PathBuf,
        /// At least this many records.
        #[arg(long)]
        records: u64,
        /// Sync every group of records (default: off, as `audit.bench_unsafe_no_fsync`).
        #[arg(long)]
        fsync: bool,
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

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Recompute the state each snapshot holds from the log's records before it and compare
    /// byte for byte, and check that an `audit.snapshot` record after it names its SHA-256.
    /// Exits 1 on the first snapshot that fails.
    Verify {
        /// The log directory.
        #[arg(long)]
        dir: PathBuf,
        /// The snapshot file; default: every file in DIR/snapshots/.
        file: Option<PathBuf>,
        #[command(flatten)]
        key: PubkeyArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Json,
    Table,
}

/// `verify`'s witness options.
#[derive(clap::Args)]
pub(crate) struct WitnessArgs {
    /// A witness's key (<name>+<key id>+<base64(0x04 || key)>): the checkpoints it cosigned
    /// (DIR/cosignatures/) must be in the log. Repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    keys: Vec<String>,
    /// At least K of the --witness keys must have cosigned a checkpoint of the log (default:
    /// 1 with --witness).
    #[arg(long, value_name = "K")]
    min_witnesses: Option<usize>,
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

/// `verify`'s checkpoint verifier keys: one for one log, one per log (matched by its name,
/// which is the log's origin) for several.
#[derive(clap::Args)]
pub(crate) struct VerifyKeyArgs {
    /// The checkpoint verifier key (C2SP vkey), as printed by `signerctl audit pubkey`.
    /// Repeat it for the logs of several replicas: each log takes the key named by its
    /// origin.
    #[arg(long)]
    pubkey: Vec<String>,
    /// A file holding a verifier key (repeatable, as --pubkey).
    #[arg(long)]
    pubkey_file: Vec<PathBuf>,
}

impl VerifyKeyArgs {
    fn keys(&self) -> anyhow::Result<Vec<VerifierKey>> {
        let mut keys = Vec::new();
        for text in &self.pubkey {
            keys.extend(commands::verifier_key(Some(text), None)?);
        }
        for file in &self.pubkey_file {
            keys.extend(commands::verifier_key(None, Some(file))?);
        }
        Ok(keys)
    }
}

impl PubkeyArgs {
    fn key(&self) -> anyhow::Result<Option<VerifierKey>> {
        Ok(commands::verifier_key(
            self.pubkey.as_deref(),
            self.pubkey_file.as_deref(),
        )?)
    }
}

fn load_config(path: &Path) -> anyhow::Result<signerd::config::Config> {
    Ok(signerd::config::Config::load(path)?)
}

/// Runs a command of the auditor crate on a blocking thread (they read and hash whole logs),
/// writing to stdout.
async fn blocking(
    run: impl FnOnce(&mut dyn Write) -> Result<(), CommandError> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let done = run(&mut out);
        out.flush()?;
        Ok(done?)
    })
    .await
    .context("audit task")?
}

/// Generates the audit checkpoint key in the `pkcs11` token or `vault` server of `[keys]`.
async fn generate_held(
    cfg: &signerd::config::Config,
    backend: Backend,
    name: &str,
) -> anyhow::Result<signerd::keys::KeyInfo> {
    match backend {
        Backend::Soft => bail!("the soft audit key is not held by a key backend"),
        Backend::Pkcs11 => {
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
        Backend::Vault => {
            let v = cfg
                .keys
                .vault
                .as_ref()
                .context("keys: [keys.vault] is missing")?;
            Ok(signerd::keys::vault::generate_audit_key(v, name).await?)
        }
    }
}

/// Runs one `signerctl audit` command.
pub(crate) async fn run(cmd: AuditCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Keygen { config } => {
            let cfg = load_config(&config)?;
            let (vkey, place) = match cfg.audit.signing_key_backend {
                Backend::Soft => {
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
                    let background = signerd::tasks::Background::new();
                    let backend = if cfg.keys.backend == Backend::Vault {
                        signerd::server::open_vault_keys(&cfg, Some(&spec), &background).await?
                    } else {
                        signerd::server::open_keys(&cfg, Some(&spec), &background)?
                    };
                    let info = backend.audit_handle().map(|h| h.info().clone()).with_context(|| {
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
            dirs,
            key,
            checkpoints,
            since,
            live,
            witnesses,
        } => {
            let mut keys = key.keys()?;
            let dir = match <[PathBuf; 1]>::try_from(dirs) {
                Ok([dir]) => dir,
                Err(dirs) => {
                    if !checkpoints.is_empty()
                        || since.is_some()
                        || !witnesses.keys.is_empty()
                        || witnesses.min_witnesses.is_some()
                    {
                        bail!(
                            "--checkpoint, --since, --witness and --min-witnesses are about one log: verify that log on its own"
                        );
                    }
                    return blocking(move |out| {
                        replicas::verify_logs(&dirs, keys, live, json_out, out)
                    })
                    .await;
                }
            };
            if keys.len() > 1 {
                bail!("one log takes one --pubkey or --pubkey-file");
            }
            let key = keys.pop();
            let flags = commands::VerifyFlags { live, since };
            if witnesses.keys.is_empty() && witnesses.min_witnesses.is_none() {
                return blocking(move |out| {
                    commands::verify(&dir, key, &checkpoints, &flags, json_out, out)
                })
                .await;
            }
            let keys = witnessed::parse_keys(&witnesses.keys)?;
            let min = witnesses.min_witnesses.unwrap_or(1);
            blocking(move |out| {
                witnessed::verify(&dir, key, &checkpoints, &flags, &keys, min, json_out, out)
            })
            .await
        }
        AuditCmd::Consistency { dir, old, new, key } => {
            let key = key.key()?;
            blocking(move |out| {
                commands::consistency(&dir, &old, new.as_deref(), key.as_ref(), out)
            })
            .await
        }
        AuditCmd::CheckConsistency { file, key } => {
            let key = key.key()?;
            blocking(move |out| commands::check_consistency(&file, key.as_ref(), json_out, out))
                .await
        }
        AuditCmd::Prove { dir, seq, key } => {
            let key = key.key()?;
            blocking(move |out| commands::prove(&dir, seq, key.as_ref(), out)).await
        }
        AuditCmd::CheckProof {
            file,
            key,
            leaf_hash,
        } => {
            let key = key.key()?;
            blocking(move |out| {
                commands::check_proof(&file, key.as_ref(), leaf_hash.as_deref(), json_out, out)
            })
            .await
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
            let format = match format {
                Format::Json => commands::Format::Json,
                Format::Table => commands::Format::Table,
            };
            blocking(move |out| commands::query(&dir, &filter, format, out)).await
        }
        AuditCmd::Recheck { dir, policies } => {
            let report = tokio::task::spawn_blocking(move || {
                signerd::audit::recheck::recheck(&dir, &policies)
            })
            .await
            .context("recheck task")??;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if json_out {
                serde_json::to_writer(&mut out, &report)?;
                writeln!(out)?;
            } else {
                signerd::audit::recheck::print(&report, &mut out)?;
            }
            out.flush()?;
            if !report.findings.is_empty() {
                bail!(
                    "recheck: {} records differ from what the recorded policy decides",
                    report.findings.len()
                );
            }
            Ok(())
        }
        AuditCmd::Tail { dir, lines, follow } => {
            blocking(move |out| commands::tail(&dir, lines, follow, out)).await
        }
        AuditCmd::Snapshot(SnapshotCmd::Verify { dir, file, key }) => {
            let key = key.key()?.context(
                "snapshot verify needs the checkpoint verifier key (--pubkey or --pubkey-file)",
            )?;
            let files: Vec<PathBuf> = file.into_iter().collect();
            let checked = tokio::task::spawn_blocking(move || {
                signerd::audit::snapshot::verify(&dir, &key, &files)
            })
            .await?;
            match checked {
                Ok(ok) => {
                    for v in ok {
                        if json_out {
                            println!(
                                "{}",
                                json!({"file": v.file, "records": v.records, "sha256": v.sha256, "named_at": v.named_at, "ok": true})
                            );
                        } else {
                            println!(
                                "{}: ok: the state of the first {} records, SHA-256 {}, named by the audit.snapshot record at seq {}",
                                v.file, v.records, v.sha256, v.named_at
                            );
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("FAILED: {e}");
                    std::process::exit(1);
                }
            }
        }
        AuditCmd::Generate {
            config,
            records,
            fsync,
        } => generate(&config, records, fsync, json_out).await,
    }
}

/// `signerctl audit generate`: opens the configuration's log with its real audit key and
/// appends generated records.
async fn generate(config: &Path, records: u64, fsync: bool, json_out: bool) -> anyhow::Result<()> {
    use signerd::audit::{AuditLog, AuditOptions};
    let cfg = load_config(config)?;
    let spec = key::backend_spec(&cfg, key::log_is_new(&cfg.audit.dir));
    let background = signerd::tasks::Background::new();
    let keys = match cfg.keys.backend {
        Backend::Vault => {
            signerd::server::open_vault_keys(&cfg, spec.as_ref(), &background).await?
        }
        _ => signerd::server::open_keys(&cfg, spec.as_ref(), &background)?,
    };
    let audit_key = key::open_for_daemon(&cfg, &keys)?;
    let mut opts = AuditOptions::from_config(&cfg.audit, audit_key.signer);
    opts.fsync = fsync;
    let dir = cfg.audit.dir.clone();
    let log = tokio::task::spawn_blocking(move || AuditLog::open(&dir, opts)).await??;
    let first = log.durable_records();
    let t = std::time::Instant::now();
    let g = signerd::audit::generate::Generate {
        records,
        first_request: first,
    };
    let requests = signerd::audit::generate::generate(&log, &g).await?;
    log.shutdown().await?;
    let written = log.durable_records() - first;
    let secs = t.elapsed().as_secs_f64();
    background.shutdown(std::time::Duration::from_secs(5)).await;
    if json_out {
        println!(
            "{}",
            json!({"records": written, "requests": requests, "seconds": secs, "records_per_second": written as f64 / secs})
        );
    } else {
        println!(
            "{written} records ({requests} requests) in {secs:.1} s: {:.0} records/s",
            written as f64 / secs
        );
    }
    Ok(())
}
