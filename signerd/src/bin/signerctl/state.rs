//! `signerctl state ...`: the state database that replicas share.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum StateCmd {
    /// Check replicas' audit logs against their PostgreSQL database: every signed result in the
    /// logs has its committed answer in the database, and every committed signed answer has
    /// its signed result in some log. Reads only; exits 1 on any mismatch.
    CrossCheck {
        /// A replica's configuration (its `[state.postgres]` names the database).
        #[arg(long)]
        config: PathBuf,
        /// Every replica's audit log directory (or a copy of it).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

pub(crate) async fn run(cmd: StateCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        StateCmd::CrossCheck { config: path, dirs } => {
            let config = signerd::config::Config::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            let Some(pg) = &config.state.postgres else {
                bail!("{}: [state] backend is not \"postgres\"", path.display());
            };
            let store = signerd::state::PostgresStore::open_existing(pg, &config.audit.origin)
                .await
                .context("opening the state database")?;
            let found = signerd::state::crosscheck::cross_check(&store, &dirs)
                .await
                .map_err(anyhow::Error::msg)?;
            if json_out {
                println!(
                    "{}",
                    json!({
                        "logs": found.logs,
                        "signed_in_logs": found.signed_in_logs,
                        "signed_rows": found.signed_rows,
                        "expired": found.expired,
                        "signed_again": found.signed_again,
                        "problems": found.problems,
                        "listed": found.listed,
                    })
                );
            } else {
                println!(
                    "{} logs: {} signed results; database: {} signed answers; {} answers expired",
                    found.logs, found.signed_in_logs, found.signed_rows, found.expired
                );
                for again in &found.signed_again {
                    println!("signed again after a replica stopped: {again}");
                }
                for p in &found.listed {
                    println!("MISMATCH: {p}");
                }
            }
            if found.problems > 0 {
                bail!(
                    "{} mismatches between the logs and the database",
                    found.problems
                );
            }
            if !json_out {
                println!(
                    "OK: every signed result has its committed answer, and every answer its result"
                );
            }
            Ok(())
        }
    }
}
