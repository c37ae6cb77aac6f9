//! `signerctl witness ...`: a C2SP tlog-witness that a security team runs on a host of its own
//! to cosign signerd's audit checkpoints (`docs/operations.md`, "Witnesses").
//!
//! `keygen` creates the witness's Ed25519 key file and prints its public key; `pubkey` prints
//! it again; `run` serves `POST /add-checkpoint` for the logs given by their checkpoint
//! verifier keys, keeping each log's latest cosigned size and root in a state directory. The
//! private key never leaves its file and is never printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use signerd::witness::key::WitnessKey;
use signerd::witness::serve::{self, Witness};
use signerd_auditor::note::VerifierKey;

#[derive(Subcommand)]
pub(crate) enum WitnessCmd {
    /// Create the witness's Ed25519 key file (mode 0600) and print its public key
    /// (<name>+<key id>+<base64(0x04 || key)>), which signerd's `[[audit.witnesses]] key` and
    /// auditors' `--witness` take.
    Keygen {
        /// The new key file; an existing file is never replaced.
        #[arg(long)]
        key_file: PathBuf,
        /// The witness's name, e.g. `witness.security.example.com/w1`.
        #[arg(long)]
        name: String,
    },
    /// Print the public key of a witness key file.
    Pubkey {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Serve the witness: `POST <listen>/add-checkpoint` (HTTP; put TLS in front if needed,
    /// cosignatures are verified by their key, not by the channel).
    Run {
        /// Address to listen on, e.g. 0.0.0.0:7380.
        #[arg(long)]
        listen: SocketAddr,
        /// The key file made by `signerctl witness keygen`.
        #[arg(long)]
        key_file: PathBuf,
        /// Directory holding each log's latest cosigned size and root (created with mode
        /// 0700). Losing it lets the witness be rolled back: back it up, never share it.
        #[arg(long)]
        state_dir: PathBuf,
        /// A log to witness: its checkpoint verifier key, as `signerctl audit pubkey` prints
        /// it (the key name is the log's origin). Repeatable.
        #[arg(long = "log", value_name = "VKEY", required = true)]
        logs: Vec<String>,
    },
}

pub(crate) async fn run(cmd: WitnessCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        WitnessCmd::Keygen { key_file, name } => {
            let key = WitnessKey::generate(&name).map_err(anyhow::Error::msg)?;
            key.write_new(&key_file).map_err(anyhow::Error::msg)?;
            print_key(json_out, &key);
            if !json_out {
                eprintln!(
                    "generated the witness key in {}; give the public key above to signerd's \
                     operators ([[audit.witnesses]] key) and to auditors (--witness)",
                    key_file.display()
                );
            }
            Ok(())
        }
        WitnessCmd::Pubkey { key_file } => {
            let key = WitnessKey::load(&key_file).map_err(anyhow::Error::msg)?;
            print_key(json_out, &key);
            Ok(())
        }
        WitnessCmd::Run {
            listen,
            key_file,
            state_dir,
            logs,
        } => {
            init_logging();
            let key = WitnessKey::load(&key_file).map_err(anyhow::Error::msg)?;
            let mut keys = Vec::new();
            for l in &logs {
                keys.push(VerifierKey::parse(l).with_context(|| format!("--log {l}"))?);
            }
            let public = key.public().to_string();
            let origins: Vec<String> = keys.iter().map(|k| k.name().to_owned()).collect();
            let witness = tokio::task::spawn_blocking(move || Witness::open(&state_dir, key, keys))
                .await?
                .map_err(anyhow::Error::msg)?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen {listen}"))?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, key = %public, logs = ?origins, "witness listening");
            // The line tests and scripts wait for.
            println!("witness listening on {addr}");
            serve::serve(
                listener,
                Arc::new(witness),
                signerd::server::shutdown_signal(),
            )
            .await
            .context("witness server")?;
            tracing::info!("witness stopped");
            Ok(())
        }
    }
}

fn print_key(json_out: bool, key: &WitnessKey) {
    if json_out {
        println!("{}", json!({"vkey": key.public().to_string()}));
    } else {
        println!("{}", key.public());
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
