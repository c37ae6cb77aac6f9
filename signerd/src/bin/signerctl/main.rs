//! `signerctl`: the command-line client of signerd for services, operators and auditors.
//!
//! Remote commands (`keys list`, `sign ...`, `approvals ...`, `request ...`) talk to a running
//! daemon over mTLS; `approver keygen` keeps the approver key local. Keystore
//! commands (`keys generate`, `keys import`) work on the local keystore named by a
//! configuration file and never send key material anywhere.

mod admin;
mod approvals;
mod audit;
mod bench;
mod bench_floor;
mod bench_vault;
mod books;
mod policy;
mod policy_sign;
mod state;
mod witness;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use signerd::client::{ClientSettings, connect};
use signerd::keys::{Algorithm, KeyInfo};
use signerd_proto::v1;

#[derive(Parser)]
#[command(
    name = "signerctl",
    version,
    about = "Client for the signerd signing daemon"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Conn {
    /// signerd's address (default: from --dev, else https://127.0.0.1:50051). `bench` takes it
    /// more than once, to spread its clients over several replicas.
    #[arg(long, global = true)]
    endpoint: Vec<String>,
    /// CA certificate that issued the server's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM). (`--key` is the signing key id of `sign` and `bench`.)
    #[arg(long, global = true, value_name = "FILE")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    client_key: Option<PathBuf>,
    /// A `signerd dev` directory: use its CA, its address and the certificate named by --as.
    #[arg(long, global = true)]
    dev: Option<PathBuf>,
    /// With --dev: the client to act as (app, alice, bob, carol, admin).
    #[arg(long = "as", global = true, default_value = "app")]
    as_: String,
    /// Name to verify in the server certificate, if not the endpoint's host.
    #[arg(long, global = true)]
    server_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Keys: list them on a daemon, or generate and import them in a local keystore.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Ask signerd to sign.
    #[command(subcommand)]
    Sign(SignCmd),
    /// Load a running daemon with concurrent signing requests and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Check, test, explain and compare policy files (offline).
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// The audit log: verify, prove, query, tail; the checkpoint signing key.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// A witness that cosigns signerd's audit checkpoints (C2SP tlog-witness), run on a
    /// host of its own: keygen, pubkey, run.
    #[command(subcommand)]
    Witness(witness::WitnessCmd),
    /// An approver's own Ed25519 key: generate it, print its public key.
    #[command(subcommand)]
    Approver(approvals::ApproverCmd),
    /// Requests waiting for approval: list, show, approve, reject (approver role).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Where one of your signing requests stands (pending approval, signed, rejected, ...).
    #[command(subcommand)]
    Request(approvals::RequestCmd),
    /// Operations on a running daemon for clients with the `admin` role: reload-policy.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// The state database that replicas share: cross-check it against their audit logs.
    #[command(subcommand)]
    State(state::StateCmd),
    /// The transport floor server that `bench --baseline floor` starts as its own process.
    #[command(hide = true)]
    BenchFloorServer {
        /// Directory holding the server's certificate and key and the client CA.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// List the daemon's keys.
    List,
    /// Generate a key in the key backend of a configuration: the local software keystore
    /// (`soft`), inside the PKCS#11 token (`pkcs11`, non-extractable), or in Vault / OpenBao
    /// (`vault`: a transit key, or a transit-wrapped key file for secp256k1).
    Generate {
        /// signerd configuration naming the backend.
        #[arg(long)]
        config: PathBuf,
        /// The backend to create the key in: soft, pkcs11 or vault (default: the
        /// configuration's `[keys] backend`).
        #[arg(long)]
        backend: Option<signerd::config::Backend>,
        /// The new key's id.
        #[arg(long)]
        id: String,
        /// secp256k1 or ed25519 (soft); secp256k1, p256 or ed25519 (pkcs11, vault; vault
        /// secp256k1 keys are transit-wrapped).
        #[arg(long)]
        algorithm: Algorithm,
    },
    /// Import a key into the local software keystore: an Ethereum keystore v3 file, or a raw
    /// 32-byte secret. Secrets are read from files or environment variables, never from flags.
    Import {
        /// signerd configuration whose `[keys.soft]` keystore receives the key.
        #[arg(long)]
        config: PathBuf,
        /// The new key's id.
        #[arg(long)]
        id: String,
        /// An Ethereum keystore v3 JSON file (imported as secp256k1).
        #[arg(
            long,
            conflicts_with = "secret_file",
            required_unless_present = "secret_file"
        )]
        keystore_v3: Option<PathBuf>,
        /// File holding the keystore v3 password (first line).
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Environment variable holding the keystore v3 password.
        #[arg(long)]
        password_env: Option<String>,
        /// File holding a raw private key as hex (first line).
        #[arg(long, requires = "algorithm")]
        secret_file: Option<PathBuf>,
        /// Algorithm of the raw key: secp256k1 or ed25519.
        #[arg(long)]
        algorithm: Option<Algorithm>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TxType {
    Legacy,
    Eip2930,
    Eip1559,
}

#[derive(Args)]
struct Common {
    /// Key id.
    #[arg(long = "key")]
    key_id: String,
    /// Idempotency key; a random one is chosen (and printed) when absent.
    #[arg(long)]
    request_id: Option<String>,
    /// Evaluate and explain the policy decision without signing or spending.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum SignCmd {
    /// Sign an EVM transaction (EIP-1559 unless --type says otherwise).
    EvmTx {
        #[command(flatten)]
        common: Common,
        /// Transaction type.
        #[arg(long = "type", value_enum, default_value_t = TxType::Eip1559)]
        tx_type: TxType,
        /// Chain id.
        #[arg(long)]
        chain_id: u64,
        /// Nonce.
        #[arg(long)]
        nonce: u64,
        /// Gas limit.
        #[arg(long, default_value_t = 21000)]
        gas_limit: u64,
        /// Gas price in wei (legacy, EIP-2930).
        #[arg(long, default_value = "")]
        gas_price: String,
        /// Max fee per gas in wei (EIP-1559).
        #[arg(long, default_value = "")]
        max_fee_per_gas: String,
        /// Max priority fee per gas in wei (EIP-1559).
        #[arg(long, default_value = "")]
        max_priority_fee_per_gas: String,
        /// Destination address; omit for contract creation.
        #[arg(long, default_value = "")]
        to: String,
        /// Value in wei (decimal or 0x hex).
        #[arg(long, default_value = "")]
        value: String,
        /// Calldata, 0x hex.
        #[arg(long, default_value = "")]
        data: String,
    },
    /// Sign an EIP-191 personal message.
    Message {
        #[command(flatten)]
        common: Common,
        /// The message as text.
        #[arg(long, conflicts_with = "hex")]
        text: Option<String>,
        /// The message as 0x hex bytes.
        #[arg(long)]
        hex: Option<String>,
    },
    /// Sign EIP-712 typed data (eth_signTypedData_v4 JSON) from a file, or - for stdin.
    TypedData {
        #[command(flatten)]
        common: Common,
        /// JSON file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Sign a raw 32-byte digest (blind signing; the policy must allow `raw_digest`).
    Digest {
        #[command(flatten)]
        common: Common,
        /// 0x-prefixed 32-byte hex.
        #[arg(long)]
        digest: String,
    },
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn parse_hex(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    let body = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(body).with_context(|| format!("{what}: not hex"))
}

fn settings(c: &Conn) -> anyhow::Result<ClientSettings> {
    let endpoint = match c.endpoint.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        many => bail!(
            "--endpoint is given {} times: only `bench` spreads its clients over several daemons",
            many.len()
        ),
    };
    settings_for(c, endpoint)
}

/// One client setting per `--endpoint` (`bench` over several replicas), in the order given;
/// the one default endpoint when none is given.
fn settings_each(c: &Conn) -> anyhow::Result<Vec<ClientSettings>> {
    if c.endpoint.is_empty() {
        return Ok(vec![settings_for(c, None)?]);
    }
    c.endpoint
        .iter()
        .map(|e| settings_for(c, Some(e.clone())))
        .collect()
}

fn settings_for(c: &Conn, endpoint: Option<String>) -> anyhow::Result<ClientSettings> {
    if let Some(dir) = &c.dev {
        let endpoint = match endpoint {
            Some(e) => e,
            None => {
                let mut addr = signerd::dev::listen_of(dir)?;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("https://{addr}")
            }
        };
        let mut s = ClientSettings::dev(dir, &c.as_, endpoint);
        s.server_name = c.server_name.clone();
        return Ok(s);
    }
    let (Some(ca), Some(cert), Some(key)) = (&c.ca, &c.client_cert, &c.client_key) else {
        bail!("give --ca, --client-cert and --client-key (or --dev DIR --as NAME)");
    };
    Ok(ClientSettings {
        endpoint: endpoint.unwrap_or_else(|| "https://127.0.0.1:50051".into()),
        ca: ca.clone(),
        identity: Some((cert.clone(), key.clone())),
        server_name: c.server_name.clone(),
    })
}

fn request_id(given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| {
        let mut b = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        format!("cli-{}", hex::encode(b))
    })
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn key_json(k: &v1::Key) -> serde_json::Value {
    json!({
        "id": k.id,
        "algorithm": v1::Algorithm::try_from(k.algorithm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN"),
        "backend": k.backend,
        "public_key": hex0x(&k.public_key),
        "evm_address": k.evm_address,
        "version": k.version,
    })
}

fn sig_json(s: &Option<v1::Signature>) -> serde_json::Value {
    match s {
        Some(s) => {
            json!({"r": hex0x(&s.r), "s": hex0x(&s.s), "y_parity": s.y_parity, "v": s.v, "bytes": hex0x(&s.bytes)})
        }
        None => serde_json::Value::Null,
    }
}

/// Prints the answer to a signature over a computed hash (EIP-191, EIP-712), or its dry run.
fn emit_hashed(
    json_out: bool,
    request_id: &str,
    evaluation: &Option<v1::PolicyEvaluation>,
    signing_hash: &[u8],
    signature: &Option<v1::Signature>,
    receipt: &Option<v1::AuditReceipt>,
) {
    match evaluation {
        Some(e) => emit(json_out, evaluation_json(e)),
        None => emit(
            json_out,
            json!({"request_id": request_id, "signing_hash": hex0x(signing_hash),
                   "signature": sig_json(signature), "audit_receipt": receipt_json(receipt)}),
        ),
    }
}

fn evaluation_json(e: &v1::PolicyEvaluation) -> serde_json::Value {
    json!({
        "dry_run": "nothing was signed",
        "decision": e.decision,
        "rules": e.rules.join(", "),
        "reason": e.reason,
        "explanation": e.explanation.join("; "),
        "policy_serial": e.policy_serial,
        "policy_hash": e.policy_hash,
    })
}

fn receipt_json(r: &Option<v1::AuditReceipt>) -> serde_json::Value {
    match r {
        Some(r) => json!({"seq": r.seq, "leaf_hash": hex0x(&r.leaf_hash)}),
        None => serde_json::Value::Null,
    }
}

/// Prints a request that waits for approval; false when the response is not one.
fn emit_pending(
    json_out: bool,
    request_id: &str,
    status: v1::SignStatus,
    pending: &Option<v1::PendingApproval>,
) -> bool {
    if status != v1::SignStatus::PendingApproval {
        return false;
    }
    approvals::print_state(
        json_out,
        &v1::SignRequestState {
            request_id: request_id.to_owned(),
            status: status.into(),
            pending: pending.clone(),
            ..Default::default()
        },
    );
    if !json_out {
        eprintln!(
            "nothing is signed yet: follow it with `signerctl request status {request_id} --wait`"
        );
    }
    true
}

/// Prints a flat JSON object as aligned `key: value` lines, or as JSON.
fn emit(json_out: bool, v: serde_json::Value) {
    if json_out {
        println!("{v:#}");
        return;
    }
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            match v {
                serde_json::Value::String(s) => println!("{k:>17}: {s}"),
                serde_json::Value::Object(inner) => {
                    let parts: Vec<String> = inner
                        .iter()
                        .map(|(ik, iv)| match iv {
                            serde_json::Value::String(s) => format!("{ik}={s}"),
                            other => format!("{ik}={other}"),
                        })
                        .collect();
                    println!("{k:>17}: {}", parts.join(" "));
                }
                other => println!("{k:>17}: {other}"),
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn local_keystore(config: &Path) -> anyhow::Result<(PathBuf, secrecy::SecretString)> {
    let config = signerd::config::Config::load(config)?;
    let soft = config
        .keys
        .soft
        .context("the configuration has no [keys.soft] keystore")?;
    let passphrase = soft.passphrase().map_err(anyhow::Error::msg)?;
    Ok((soft.dir, passphrase))
}

/// The first line of a secret file, which must not be readable by other users.
fn secret_line(path: &Path) -> anyhow::Result<secrecy::SecretString> {
    signerd::config::check_secret_file(path).map_err(anyhow::Error::msg)?;
    let raw = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
    );
    let line = raw.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        bail!("{}: empty", path.display());
    }
    Ok(secrecy::SecretString::from(line))
}

fn print_local_key(json_out: bool, k: &KeyInfo) {
    let address = match k.algorithm {
        Algorithm::Secp256k1 => signerd::chain::evm::address_of(&k.public_key)
            .map(|a| a.to_checksum(None))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut v = json!({"id": k.id, "algorithm": k.algorithm.as_str(), "backend": k.backend,
               "public_key": hex0x(&k.public_key), "evm_address": address});
    if let Some(version) = k.version {
        v["version"] = json!(version);
    }
    emit(json_out, v);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json_out = cli.json;
    match cli.command {
        Command::Keys(KeysCmd::Generate {
            config,
            backend,
            id,
            algorithm,
        }) => {
            let cfg = signerd::config::Config::load(&config)?;
            use signerd::config::Backend;
            let k = match backend.unwrap_or(cfg.keys.backend) {
                Backend::Soft => {
                    let (dir, passphrase) = local_keystore(&config)?;
                    signerd::keys::soft::generate(&dir, &id, algorithm, &passphrase)?
                }
                Backend::Pkcs11 => {
                    if cfg.audit.signing_key_backend == Backend::Pkcs11
                        && id == cfg.audit.signing_key_name
                    {
                        bail!(
                            "`{id}` is the audit checkpoint key's label (audit.signing_key_name); \
                             a client key cannot take it"
                        );
                    }
                    let p = cfg
                        .keys
                        .pkcs11
                        .context("the configuration has no [keys.pkcs11] table")?;
                    let pin = p
                        .pin_source()
                        .read("keys.pkcs11.pin")
                        .map_err(anyhow::Error::msg)?;
                    signerd::keys::pkcs11::Pkcs11Backend::generate(&p, &pin, &id, algorithm)?
                }
                Backend::Vault => {
                    let vault =
                        cfg.keys.vault.as_ref().with_context(|| {
                            format!("{}: no [keys.vault] table", config.display())
                        })?;
                    signerd::keys::vault::generate(vault, &id, algorithm).await?
                }
            };
            print_local_key(json_out, &k);
            if !json_out {
                println!("restart signerd to serve the new key");
            }
            Ok(())
        }
        Command::Keys(KeysCmd::Import {
            config,
            id,
            keystore_v3,
            password_file,
            password_env,
            secret_file,
            algorithm,
        }) => {
            let (dir, passphrase) = local_keystore(&config)?;
            let k = if let Some(v3) = keystore_v3 {
                let password = match (password_file, password_env) {
                    (Some(f), None) => secret_line(&f)?,
                    (None, Some(var)) => secrecy::SecretString::from(
                        std::env::var(&var).with_context(|| format!("${var} is not set"))?,
                    ),
                    _ => {
                        bail!("give --password-file or --password-env for the keystore v3 password")
                    }
                };
                signerd::keys::hazmat::import_keystore_v3(&dir, &id, &v3, &password, &passphrase)?
            } else {
                let (Some(file), Some(algorithm)) = (secret_file, algorithm) else {
                    bail!("give --keystore-v3 FILE, or --secret-file FILE with --algorithm");
                };
                let line = secret_line(&file)?;
                let hex_str = secrecy::ExposeSecret::expose_secret(&line);
                let secret = zeroize::Zeroizing::new(
                    hex::decode(hex_str.strip_prefix("0x").unwrap_or(hex_str))
                        .map_err(|_| anyhow::anyhow!("{}: not hex", file.display()))?,
                );
                signerd::keys::hazmat::import_secret(&dir, &id, algorithm, secret, &passphrase)?
            };
            print_local_key(json_out, &k);
            if !json_out {
                println!("restart signerd to serve the new key");
            }
            Ok(())
        }
        Command::Keys(KeysCmd::List) => {
            let mut client = connect(&settings(&cli.conn)?).await?;
            let keys = client
                .list_keys(v1::ListKeysRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .keys;
            if json_out {
                let list: Vec<_> = keys.iter().map(key_json).collect();
                println!("{:#}", serde_json::Value::Array(list));
            } else {
                for k in &keys {
                    let alg = v1::Algorithm::try_from(k.algorithm)
                        .map(|a| {
                            a.as_str_name()
                                .trim_start_matches("ALGORITHM_")
                                .to_lowercase()
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<24} {:<10} {:<7} {}",
                        k.id, alg, k.backend, k.evm_address
                    );
                }
            }
            Ok(())
        }
        Command::Sign(cmd) => sign(&cli.conn, json_out, cmd).await,
        Command::Policy(cmd) => policy::run(cmd, json_out),
        Command::Bench(args) => bench::run(settings_each(&cli.conn)?, args, json_out).await,
        Command::BenchFloorServer { dir } => bench_floor::serve(dir).await,
        Command::Audit(cmd) => audit::run(cmd, json_out).await,
        Command::Witness(cmd) => witness::run(cmd, json_out).await,
        Command::Approver(cmd) => approvals::run_approver(cmd, json_out),
        Command::Approvals(cmd) => {
            approvals::run_approvals(settings(&cli.conn)?, cmd, json_out).await
        }
        Command::Request(cmd) => approvals::run_request(settings(&cli.conn)?, cmd, json_out).await,
        Command::Admin(cmd) => admin::run(settings(&cli.conn)?, cmd, json_out).await,
        Command::State(cmd) => state::run(cmd, json_out).await,
    }
}

async fn sign(conn: &Conn, json_out: bool, cmd: SignCmd) -> anyhow::Result<()> {
    let mut client = connect(&settings(conn)?).await?;
    match cmd {
        SignCmd::EvmTx {
            common,
            tx_type,
            chain_id,
            nonce,
            gas_limit,
            gas_price,
            max_fee_per_gas,
            max_priority_fee_per_gas,
            to,
            value,
            data,
        } => {
            let request_id = request_id(&common.request_id);
            let r#type = match tx_type {
                TxType::Legacy => v1::EvmTransactionType::Legacy,
                TxType::Eip2930 => v1::EvmTransactionType::Eip2930,
                TxType::Eip1559 => v1::EvmTransactionType::Eip1559,
            };
            let resp = client
                .sign_evm_transaction(v1::SignEvmTransactionRequest {
                    dry_run: common.dry_run,
                    request_id: request_id.clone(),
                    key_id: common.key_id,
                    r#type: r#type.into(),
                    chain_id,
                    nonce,
                    gas_limit,
                    gas_price,
                    max_fee_per_gas,
                    max_priority_fee_per_gas,
                    to,
                    value,
                    data: if data.is_empty() {
                        Vec::new()
                    } else {
                        parse_hex("--data", &data)?
                    },
                    access_list: Vec::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(e) = &resp.evaluation {
                emit(json_out, evaluation_json(e));
                return Ok(());
            }
            if emit_pending(json_out, &request_id, resp.status(), &resp.pending) {
                return Ok(());
            }
            emit(
                json_out,
                json!({
                    "request_id": request_id,
                    "raw_transaction": hex0x(&resp.raw_transaction),
                    "transaction_hash": hex0x(&resp.transaction_hash),
                    "signing_hash": hex0x(&resp.signing_hash),
                    "signature": sig_json(&resp.signature),
                    "audit_receipt": receipt_json(&resp.receipt),
                }),
            );
        }
        SignCmd::Message { common, text, hex } => {
            let message = match (text, hex) {
                (Some(t), None) => t.into_bytes(),
                (None, Some(h)) => parse_hex("--hex", &h)?,
                _ => bail!("give --text or --hex"),
            };
            let request_id = request_id(&common.request_id);
            let resp = client
                .sign_evm_message(v1::SignEvmMessageRequest {
                    dry_run: common.dry_run,
                    request_id: request_id.clone(),
                    key_id: common.key_id,
                    message,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if emit_pending(json_out, &request_id, resp.status(), &resp.pending) {
                return Ok(());
            }
            emit_hashed(
                json_out,
                &request_id,
                &resp.evaluation,
                &resp.signing_hash,
                &resp.signature,
                &resp.receipt,
            );
        }
        SignCmd::TypedData { common, file } => {
            let typed_data_json = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?
            };
            let request_id = request_id(&common.request_id);
            let resp = client
                .sign_typed_data(v1::SignTypedDataRequest {
                    dry_run: common.dry_run,
                    request_id: request_id.clone(),
                    key_id: common.key_id,
                    typed_data_json,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if emit_pending(json_out, &request_id, resp.status(), &resp.pending) {
                return Ok(());
            }
            emit_hashed(
                json_out,
                &request_id,
                &resp.evaluation,
                &resp.signing_hash,
                &resp.signature,
                &resp.receipt,
            );
        }
        SignCmd::Digest { common, digest } => {
            let request_id = request_id(&common.request_id);
            let resp = client
                .sign_digest(v1::SignDigestRequest {
                    dry_run: common.dry_run,
                    request_id: request_id.clone(),
                    key_id: common.key_id,
                    digest: parse_hex("--digest", &digest)?,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(e) = &resp.evaluation {
                emit(json_out, evaluation_json(e));
                return Ok(());
            }
            if emit_pending(json_out, &request_id, resp.status(), &resp.pending) {
                return Ok(());
            }
            emit(
                json_out,
                json!({"request_id": request_id, "signature": sig_json(&resp.signature),
                       "audit_receipt": receipt_json(&resp.receipt)}),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::Cli;

    /// Every flag of `cmd` and its subcommands, with the global flags of its ancestors, must have
    /// one meaning: a name (long, short or alias) that appears twice in one command's effective
    /// argument list is reported as `command path: --name (arg a, arg b)`. clap's own debug
    /// assertions do not see a global flag shadowed by a subcommand's flag of the same name.
    fn duplicate_flags(
        cmd: &clap::Command,
        path: &str,
        inherited: &[clap::Arg],
        found: &mut Vec<String>,
    ) {
        let mut effective: Vec<clap::Arg> = inherited.to_vec();
        effective.extend(cmd.get_arguments().cloned());
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for arg in &effective {
            let id = arg.get_id().to_string();
            let longs = arg
                .get_long()
                .into_iter()
                .chain(arg.get_all_aliases().unwrap_or_default())
                .map(|l| format!("--{l}"));
            let shorts = arg
                .get_short()
                .into_iter()
                .chain(arg.get_all_short_aliases().unwrap_or_default())
                .map(|s| format!("-{s}"));
            for name in longs.chain(shorts) {
                names.entry(name).or_default().push(id.clone());
            }
        }
        for (name, ids) in names {
            if ids.len() > 1 {
                found.push(format!("{path}: {name} ({})", ids.join(", ")));
            }
        }
        let globals: Vec<clap::Arg> = effective
            .iter()
            .filter(|a| a.is_global_set())
            .cloned()
            .collect();
        for sub in cmd.get_subcommands() {
            duplicate_flags(sub, &format!("{path} {}", sub.get_name()), &globals, found);
        }
    }

    #[test]
    fn no_flag_has_two_meanings_in_any_subcommand() {
        let root = Cli::command();
        root.clone().debug_assert();
        let mut found = Vec::new();
        duplicate_flags(&root, "signerctl", &[], &mut found);
        assert!(found.is_empty(), "flags named twice: {found:#?}");
    }

    #[test]
    fn a_signing_key_id_and_a_client_key_file_parse_together() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "signerctl",
            "sign",
            "evm-tx",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c-key.pem",
            "--ca",
            "ca.pem",
            "--key",
            "dev-secp256k1",
            "--chain-id",
            "1",
            "--nonce",
            "0",
        ])
        .map_err(|e| e.to_string());
        let cli = match cli {
            Ok(cli) => cli,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            cli.conn.client_key.as_deref(),
            Some(std::path::Path::new("c-key.pem"))
        );
        match cli.command {
            super::Command::Sign(super::SignCmd::EvmTx { common, .. }) => {
                assert_eq!(common.key_id, "dev-secp256k1")
            }
            _ => panic!("parsed as another command"),
        }
    }
}
