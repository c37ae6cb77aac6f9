//! `signerd`: the signing daemon.
//!
//! `signerd dev` runs on embedded development defaults; `signerd run --config FILE` runs a
//! production configuration; `signerd check-config --config FILE` validates one.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use signerd::config::Config;
use signerd::server::{Daemon, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "signerd",
    version,
    about = "Self-hosted custody and signing daemon"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` also works.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DevBackendArg {
    Soft,
    Pkcs11,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run with development defaults, creating DIR on first run (CA, certificates, keys, policy).
    Dev {
        /// The development directory (default `.signerd-dev`, or `.signerd-dev-pkcs11` with
        /// `--backend pkcs11`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the development keys live: the software keystore, or a SoftHSM2 token
        /// (needs SoftHSM2 installed).
        #[arg(long, value_enum, default_value_t = DevBackendArg::Soft)]
        backend: DevBackendArg,
        /// Listen address (default 127.0.0.1:50051, or what DIR's configuration says).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run a production configuration.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Start even though the policy's serial is lower than one the audit log has loaded
        /// (a deliberate rollback; the start-up `policy.load` record says `forced`).
        #[arg(long)]
        allow_policy_rollback: bool,
        /// Bind the state store to this audit log although it belongs to another one (or to
        /// this one when it held more records); recorded as `state.rebind`.
        #[arg(long)]
        rebind_state_to_log: bool,
    },
    /// Validate a configuration: the file, the policy, the TLS material and the keystore.
    CheckConfig {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // The Vault client libraries log every failed call at ERROR, with request details; the
    // vault backend reports each failure itself, classified, so theirs stay off whatever the
    // filter says (a later directive for the same target replaces the user's).
    for quiet in ["vaultrs=off", "rustify=off"] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Dev {
        dir,
        backend: DevBackendArg::Pkcs11,
        ..
    } = &cli.command
    {
        softhsm_env(dir.as_deref().unwrap_or(".signerd-dev-pkcs11".as_ref()))?;
    }
    init_logging(cli.log_format, &cli.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev {
                dir,
                backend,
                listen,
            } => dev(dir, backend, listen).await,
            Command::Run {
                config,
                allow_policy_rollback,
                rebind_state_to_log,
            } => {
                let options = signerd::server::StartOptions {
                    allow_policy_rollback,
                    rebind_state_to_log,
                };
                run(config, options).await
            }
            Command::CheckConfig { config } => check(config).await,
        }
    })
}

/// Hardens the process before any secret is read, and says what holds.
fn harden(lock_memory: bool, max_connections: Option<usize>) -> anyhow::Result<()> {
    let done = signerd::hardening::apply(lock_memory)?;
    // Each connection is a file descriptor: a limit below max_connections would refuse
    // clients with "too many open files" before the configured caps apply.
    let files = signerd::hardening::raise_open_files()?;
    let needed = max_connections
        .map(|n| (n as u64).saturating_add(signerd::hardening::FILES_BESIDE_CONNECTIONS));
    if let (Some(files), Some(needed)) = (files, needed)
        && files < needed
    {
        tracing::warn!(
            open_files = files,
            needed,
            "RLIMIT_NOFILE is below server.max_connections + {}: raise it (LimitNOFILE= under systemd)",
            signerd::hardening::FILES_BESIDE_CONNECTIONS
        );
    }
    let (core, dumpable) = signerd::hardening::current()?;
    tracing::info!(
        core_limit = core.unwrap_or(u64::MAX),
        dumpable,
        memory_locked = done.memory_locked,
        "process hardened"
    );
    Ok(())
}

async fn run(path: PathBuf, options: signerd::server::StartOptions) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    harden(
        config.server.lock_memory,
        Some(config.server.max_connections),
    )?;
    let daemon = Daemon::open_with(config, options).await?;
    let shutdown = shutdown_signal();
    println!("signerd listening on {}", daemon.local_addr()?);
    if let Some(a) = daemon.metrics_addr() {
        println!("signerd metrics on http://{a}/metrics");
    }
    daemon.serve(shutdown).await?;
    println!("signerd stopped");
    Ok(())
}

/// SoftHSM2 reads `SOFTHSM2_CONF` when the module initializes; a process cannot safely change
/// its own environment, so `signerd dev --backend pkcs11` runs itself again with the
/// development token's configuration in it.
fn softhsm_env(dir: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).with_context(|| dir.display().to_string())?;
    let conf = signerd::dev::softhsm_conf(&dir);
    if std::env::var_os("SOFTHSM2_CONF").as_deref() == Some(conf.as_os_str()) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the signerd executable")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("SOFTHSM2_CONF", &conf)
        .exec();
    Err(anyhow::anyhow!(
        "re-running signerd with SOFTHSM2_CONF set: {err}"
    ))
}

async fn dev(
    dir: Option<PathBuf>,
    backend: DevBackendArg,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let backend = match backend {
        DevBackendArg::Soft => signerd::dev::DevBackend::Soft,
        DevBackendArg::Pkcs11 => signerd::dev::DevBackend::Pkcs11,
    };
    let dir = dir.unwrap_or_else(|| match backend {
        signerd::dev::DevBackend::Soft => PathBuf::from(".signerd-dev"),
        signerd::dev::DevBackend::Pkcs11 => PathBuf::from(".signerd-dev-pkcs11"),
    });
    harden(false, None)?;
    let config_path = signerd::dev::prepare(&dir, listen, backend)?;
    let config = Config::load(&config_path)?;
    let daemon = Daemon::open(config.clone()).await?;
    let addr = daemon.local_addr()?;
    let shutdown = shutdown_signal();
    let shown = dir.display();
    println!("signerd listening on {addr}");
    if let Some(a) = daemon.metrics_addr() {
        println!("signerd metrics on http://{a}/metrics");
    }
    println!();
    println!("Development mode: mTLS (TLS 1.3) with the development CA in {shown}/pki.");
    println!(
        "Configuration {shown}/signerd.toml, policy {shown}/policy.toml, audit log {shown}/audit/."
    );
    println!(
        "Keys: {} (secp256k1), {} (ed25519).",
        signerd::dev::DEV_SECP256K1,
        signerd::dev::DEV_ED25519
    );
    println!();
    println!("In another terminal, sign an EIP-1559 transaction as client `app`:");
    // signerctl --dev finds the address in the configuration, unless the port was chosen at bind.
    let endpoint = if addr == config.server.listen {
        String::new()
    } else {
        format!(" --endpoint https://{addr}")
    };
    println!();
    println!(
        "  cargo run --release --bin signerctl -- --dev {shown} --as app{endpoint} sign evm-tx \\\n    \
         --key {} --chain-id 1 --nonce 0 --gas-limit 21000 \\\n    \
         --max-fee-per-gas 30000000000 --max-priority-fee-per-gas 1000000000 \\\n    \
         --to 0x3535353535353535353535353535353535353535 --value 1000000000000000",
        signerd::dev::DEV_SECP256K1
    );
    println!();
    println!(
        "Policies load only when signed by the policy administrators. To change it, edit \
         {shown}/policy.toml (raise `serial`), sign it as the development administrator `{}` \
         and reload (SIGHUP, or `signerctl admin reload-policy`):",
        signerd::dev::DEV_ADMINISTRATOR
    );
    println!();
    println!(
        "  cargo run --release --bin signerctl -- policy sign --config {shown}/signerd.toml \\\n    \
         --key {shown}/{} --name {} {shown}/policy.toml",
        signerd::dev::DEV_ADMINISTRATOR_KEY,
        signerd::dev::DEV_ADMINISTRATOR
    );
    println!("  kill -HUP {}", std::process::id());
    println!();
    println!("Stop with Ctrl-C.");
    daemon.serve(shutdown).await?;
    println!("signerd stopped");
    Ok(())
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    harden(false, None)?;
    for deprecation in config.deprecations() {
        tracing::warn!("{deprecation}");
    }
    let policy = signerd::policy_file::load_policy(&config.policy.file)?;
    // The signatures, as a start would count them: against the policy the log loaded last
    // (the log is only read).
    let trust = signerd::policy_file::Trust::from_config(&config).map_err(anyhow::Error::msg)?;
    let last = if config.audit.dir.exists() {
        signerd::state::reconcile::last_policy_hash(&config.audit.dir)
            .map_err(anyhow::Error::msg)?
    } else {
        None
    };
    let (governance, in_force) =
        signerd::policy_file::in_force(&config.audit.dir, last.as_deref(), &trust.anchor)
            .map_err(anyhow::Error::msg)?;
    let admitted = signerd::policy_file::admit(
        &config.policy.file,
        &policy,
        &trust,
        &governance,
        in_force.as_ref(),
    )?;
    signerd::tls::server_config(&config.tls)?;
    // The audit key is looked for, never created, here.
    let audit_spec = signerd::audit::key::backend_spec(&config, false);
    let background = signerd::tasks::Background::new();
    let keys = if config.keys.backend == signerd::config::Backend::Vault {
        signerd::server::open_vault_keys(&config, audit_spec.as_ref(), &background).await?
    } else {
        signerd::server::open_keys(&config, audit_spec.as_ref(), &background)?
    };
    signerd::policy_file::check_keys(&policy, keys.keys().into_iter().map(|k| k.id))?;
    println!(
        "{}: OK ({} identities, policy serial {} sha256 {}, {} keys in the {} backend)",
        path.display(),
        config.identities.len(),
        policy.serial(),
        policy.hash_hex(),
        keys.keys().len(),
        keys.name()
    );
    println!(
        "policy signatures: loads ({} threshold), signed by {}",
        admitted.threshold.as_str(),
        admitted.signers.join(", ")
    );
    if let Some(spec) = audit_spec {
        match keys.audit_handle().map(|h| h.info().clone()) {
            Some(_) => println!(
                "audit checkpoint key `{}`: held by the {} backend",
                spec.name,
                keys.name()
            ),
            None if signerd::audit::key::log_is_new(&config.audit.dir) => println!(
                "audit checkpoint key `{}`: not in the {} backend yet; the first start creates it",
                spec.name,
                keys.name()
            ),
            None => anyhow::bail!(
                "audit checkpoint key `{}` is not in the {} backend, but the audit log in {} exists",
                spec.name,
                keys.name(),
                config.audit.dir.display()
            ),
        }
    }
    Ok(())
}
