//! Shared fixtures of the black-box tests: a throw-away installation per test (PKI, keystore,
//! policy, configuration), the real `signerd` process around it, mTLS clients, and checks of
//! what the daemon answers that do not trust the daemon's own code.
//!
//! Verification is independent: signatures are recovered with the `secp256k1` crate and
//! verified with `ring`, transactions are decoded with alloy, leaf hashes are recomputed from
//! the bytes on disk. Every process started here is stopped (SIGTERM, then SIGKILL) when its
//! handle drops, so a failing test never leaves a daemon behind.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, keccak256};
use serde_json::Value;
use sha2::{Digest, Sha256};
use signerd::client::{ClientSettings, connect};
use signerd::keys::Algorithm;
use signerd::tls::pki::{ClientOptions, DevCa};
use signerd_proto::v1;
use signerd_proto::v1::signer_client::SignerClient;
use tonic::transport::Channel;

/// The daemon binary under test.
pub(crate) const SIGNERD: &str = env!("CARGO_BIN_EXE_signerd");
/// The CLI binary under test.
pub(crate) const SIGNERCTL: &str = env!("CARGO_BIN_EXE_signerctl");
/// The keystore passphrase of every test installation (test keys only).
const PASSPHRASE: &str = "blackbox-test-passphrase-not-a-secret";
/// The secp256k1 key id.
pub(crate) const HOT: &str = "hot";
/// The Ed25519 key id.
pub(crate) const ED: &str = "ed";
/// The SAN URI identity `payments` is mapped from.
pub(crate) const SPIFFE_ID: &str = "spiffe://blackbox.test/ns/prod/sa/payments";
/// A destination address (EIP-155's example recipient).
pub(crate) const TO: &str = "0x3535353535353535353535353535353535353535";
/// Init code used for contract creations.
pub(crate) const INIT_CODE: &[u8] = &[0x60, 0x00, 0x60, 0x00, 0xf3];

/// How long a daemon may take to print its listening line (Argon2 runs at start).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for records that the daemon appends without waiting for durability.
pub(crate) const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// The policy every installation starts with.
pub(crate) const DEFAULT_POLICY: &str = r#"version = 1
serial = 1

[[rule]]
id = "requesters-hot"
description = "requesters sign anything but raw digests with the secp256k1 key"
effect = "allow"
roles = ["requester"]
keys = ["hot"]

[[rule]]
id = "requesters-mail"
description = "opaque typed data is allowed only by name: requesters sign EIP-712 Mail"
effect = "allow"
roles = ["requester"]
keys = ["hot"]
kinds = ["eip712_typed_data"]
primary_types = ["Mail"]

[[rule]]
id = "app-ed-digest"
description = "blind signing is named: app signs raw digests with the Ed25519 key"
effect = "allow"
clients = ["app"]
keys = ["ed"]
kinds = ["raw_digest"]

[[rule]]
id = "no-contract-creation"
description = "the hot key never deploys contracts"
effect = "deny"
keys = ["hot"]
kinds = ["contract_creation"]
"#;

/// The policy administrator who signs every test policy unless a test says otherwise.
pub(crate) const ADMIN: &str = "ops";

/// The Ed25519 key of the test policy administrator `name` (derived from the name: test keys
/// only).
pub(crate) fn admin_key(name: &str) -> ed25519_dalek::SigningKey {
    let seed: [u8; 32] = Sha256::digest(format!("blackbox policy administrator {name}")).into();
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// `name = "ed25519:<hex>"` entries for `names`, for `administrators = { ... }`.
pub(crate) fn administrators(names: &[&str]) -> String {
    let entries: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "{n} = \"ed25519:{}\"",
                hex::encode(admin_key(n).verifying_key().to_bytes())
            )
        })
        .collect();
    format!("{{ {} }}", entries.join(", "))
}

/// The members of a `[governance]` or `[policy.trust]` table.
pub(crate) fn governance_body(threshold: u32, tighten: u32, names: &[&str]) -> String {
    format!(
        "threshold = {threshold}\ntighten_threshold = {tighten}\nadministrators = {}\n",
        administrators(names)
    )
}

/// The audit log origin of every test installation (the configuration's default).
pub(crate) const ORIGIN: &str = "signerd/audit";

/// Client certificates every installation issues: (file name, subject CN, options).
/// `app`, `bob`, `admin`, `payments`, `carol`, `dave` and `erin` are mapped; the others are
/// refused for one reason each.
const CLIENTS: &[(&str, &str, Cert)] = &[
    ("app", "app", Cert::Good),
    ("bob", "bob", Cert::Good),
    ("admin", "admin", Cert::Good),
    ("stranger", "stranger", Cert::Good),
    ("payments", "payments-pod", Cert::Spiffe),
    ("app-expired", "app", Cert::Expired),
    ("app-revoked", "app", Cert::Revoked),
    ("app-rogue", "app", Cert::OtherCa),
    // Approvers (see approvals.rs): `carol` and `erin` approve, `dave` requests and approves.
    ("carol", "carol", Cert::Good),
    ("dave", "dave", Cert::Good),
    ("erin", "erin", Cert::Good),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cert {
    Good,
    Spiffe,
    Expired,
    Revoked,
    OtherCa,
}

/// Knobs of one installation's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Opts {
    /// `server.max_message_bytes`.
    pub(crate) max_message_bytes: Option<usize>,
    /// `server.handshake_timeout`.
    pub(crate) handshake_timeout: Option<Duration>,
    /// Configure `tls.crls` with the CRL that revokes `app-revoked`.
    pub(crate) crl: bool,
    /// The policy file's text.
    pub(crate) policy: String,
    /// Replaces the `[keys]` tables (the soft keystore) when set; the audit key then uses
    /// `keystore.pass` as its own passphrase.
    pub(crate) keys: Option<String>,
    /// The members of `[policy.trust]` and of the `[governance]` added to a policy that has
    /// none: by default `ops` alone, threshold 1.
    pub(crate) governance: String,
    /// Who signs the policy [`TestEnv::write_config`] writes.
    pub(crate) signers: Vec<String>,
    /// Lines added to the `[state]` table.
    pub(crate) state: String,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            max_message_bytes: None,
            handshake_timeout: None,
            crl: false,
            policy: DEFAULT_POLICY.to_owned(),
            keys: None,
            governance: governance_body(1, 1, &[ADMIN]),
            signers: vec![ADMIN.to_owned()],
            state: String::new(),
        }
    }
}

/// Writes a new file with `mode`.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(contents).unwrap();
}

fn mkdir(path: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The file mode bits of `path`.
pub(crate) fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A keystore with `hot` and `ed`, generated once per test process (Argon2 is slow on
/// purpose) and copied into each installation.
fn keystore_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        mkdir(&base);
        // Templates of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("blackbox-keystore-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("blackbox-keystore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        mkdir(&dir);
        let pass = secrecy::SecretString::from(PASSPHRASE.to_owned());
        for (id, alg) in [(HOT, Algorithm::Secp256k1), (ED, Algorithm::Ed25519)] {
            let info = signerd::keys::soft::generate(&dir, id, alg, &pass)
                .unwrap_or_else(|e| panic!("generating test key `{id}`: {e}"));
            assert_eq!(info.algorithm, alg);
        }
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    mkdir(to);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            // fs::copy keeps the permission bits (0600 key files stay 0600).
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// One test's installation in a unique temporary directory, removed on drop unless the
/// test failed (then it is kept and its path printed, for post-mortems).
pub(crate) struct TestEnv {
    /// The installation directory.
    pub(crate) dir: PathBuf,
    /// The configuration knobs; call [`TestEnv::write_config`] after changing them.
    pub(crate) opts: Opts,
}

impl TestEnv {
    /// An installation with the default options.
    pub(crate) fn new(name: &str) -> TestEnv {
        TestEnv::with(name, Opts::default())
    }

    /// An installation with `opts`.
    pub(crate) fn with(name: &str, opts: Opts) -> TestEnv {
        let dir = unique_dir(name);
        let env = TestEnv { dir, opts };
        env.write_pki();
        copy_dir(keystore_template(), &env.dir.join("keys"));
        write_file(
            &env.dir.join("keystore.pass"),
            format!("{PASSPHRASE}\n").as_bytes(),
            0o600,
        );
        env.write_config();
        env
    }

    fn write_pki(&self) {
        let pki = self.dir.join("pki");
        mkdir(&pki);
        let ca = DevCa::generate("signerd blackbox CA").unwrap();
        let rogue = DevCa::generate("signerd blackbox CA").unwrap();
        write_file(&pki.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644);
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        write_file(&pki.join("server.pem"), server.cert_pem.as_bytes(), 0o644);
        write_file(
            &pki.join("server-key.pem"),
            server.key_pem.as_bytes(),
            0o600,
        );
        let mut revoked = Vec::new();
        for (file, cn, kind) in CLIENTS {
            let opts = ClientOptions {
                san_uri: (*kind == Cert::Spiffe).then(|| SPIFFE_ID.to_owned()),
                expired: *kind == Cert::Expired,
            };
            let issuer = if *kind == Cert::OtherCa { &rogue } else { &ca };
            let c = issuer.issue_client(cn, &opts).unwrap();
            if *kind == Cert::Revoked {
                revoked.push(c.serial.clone());
            }
            write_file(
                &pki.join(format!("{file}.pem")),
                c.cert_pem.as_bytes(),
                0o644,
            );
            write_file(
                &pki.join(format!("{file}-key.pem")),
                c.key_pem.as_bytes(),
                0o600,
            );
        }
        let serials: Vec<&[u8]> = revoked.iter().map(Vec::as_slice).collect();
        write_file(
            &pki.join("crl.pem"),
            ca.crl(&serials).unwrap().as_bytes(),
            0o644,
        );
    }

    /// The configuration file.
    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.join("signerd.toml")
    }

    /// The audit directory.
    pub(crate) fn audit_dir(&self) -> PathBuf {
        self.dir.join("audit")
    }

    /// (Re)writes `signerd.toml` and `policy.toml` from [`TestEnv::opts`].
    pub(crate) fn write_config(&self) {
        let mut server = String::from("listen = \"127.0.0.1:0\"\n");
        if let Some(n) = self.opts.max_message_bytes {
            server.push_str(&format!("max_message_bytes = {n}\n"));
        }
        if let Some(t) = self.opts.handshake_timeout {
            server.push_str(&format!("handshake_timeout = \"{}ms\"\n", t.as_millis()));
        }
        let crls = if self.opts.crl {
            "crls = [\"pki/crl.pem\"]\n"
        } else {
            ""
        };
        let keys = self.opts.keys.as_deref().unwrap_or(
            "[keys]\nbackend = \"soft\"\n\n[keys.soft]\ndir = \"keys\"\npassphrase_file = \"keystore.pass\"\n",
        );
        let audit_pass = if self.opts.keys.is_some() {
            "signing_key_passphrase_file = \"keystore.pass\"\n"
        } else {
            ""
        };
        let trust = &self.opts.governance;
        let state = &self.opts.state;
        let text = format!(
            r#"[server]
{server}
[tls]
cert = "pki/server.pem"
key = "pki/server-key.pem"
client_ca = "pki/ca.pem"
{crls}
[[identity]]
id = "app"
roles = ["requester"]
subject_cn = "app"

[[identity]]
id = "bob"
roles = ["approver"]
subject_cn = "bob"

[[identity]]
id = "admin"
roles = ["admin"]
subject_cn = "admin"

[[identity]]
id = "payments"
roles = ["requester"]
san_uri = "{SPIFFE_ID}"

[[identity]]
id = "carol"
roles = ["approver"]
subject_cn = "carol"

[[identity]]
id = "dave"
roles = ["requester", "approver"]
subject_cn = "dave"

[[identity]]
id = "erin"
roles = ["approver"]
subject_cn = "erin"

[policy]
file = "policy.toml"

[policy.trust]
{trust}
{keys}
[state]
dir = "state"
{state}

[audit]
dir = "audit"
{audit_pass}"#
        );
        write_file(&self.config_path(), text.as_bytes(), 0o600);
        let signers: Vec<&str> = self.opts.signers.iter().map(String::as_str).collect();
        self.write_policy_signed(&self.opts.policy, &signers);
    }

    /// The policy file.
    pub(crate) fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// The policy's signature file.
    pub(crate) fn signatures_path(&self) -> PathBuf {
        self.dir.join("policy.toml.sig")
    }

    /// `text` with the installation's `[governance]` added when it has none.
    pub(crate) fn governed(&self, text: &str) -> String {
        if text.contains("[governance]") {
            text.to_owned()
        } else {
            format!("{text}\n[governance]\n{}", self.opts.governance)
        }
    }

    /// Writes `text` (governed) as the policy file, signed by the installation's signers.
    pub(crate) fn write_policy(&self, text: &str) {
        let signers: Vec<&str> = self.opts.signers.iter().map(String::as_str).collect();
        self.write_policy_signed(text, &signers);
    }

    /// Writes `text` (governed) as the policy file and a signature file with the signatures of
    /// `signers` (over this file, for the origin the configuration names) and nothing else. A
    /// text that does not parse is written unsigned.
    pub(crate) fn write_policy_signed(&self, text: &str, signers: &[&str]) {
        let text = self.governed(text);
        write_file(&self.policy_path(), text.as_bytes(), 0o644);
        let sigs: String = match signerd_policy::Policy::parse("policy.toml", &text) {
            Ok(p) => signers
                .iter()
                .map(|n| self.signature(n, &self.origin(), &p).to_toml() + "\n")
                .collect(),
            Err(_) => String::new(),
        };
        write_file(&self.signatures_path(), sigs.as_bytes(), 0o644);
    }

    /// The audit log origin the configuration names (policy signatures are bound to it).
    pub(crate) fn origin(&self) -> String {
        signerd::config::Config::load(&self.config_path())
            .map_or_else(|_| ORIGIN.to_owned(), |c| c.audit.origin)
    }

    /// The signature of the administrator `name` over `policy` for `origin`.
    pub(crate) fn signature(
        &self,
        name: &str,
        origin: &str,
        policy: &signerd_policy::Policy,
    ) -> signerd_policy::PolicySignature {
        signerd::policy_file::sign(&admin_key(name), name, origin, policy)
    }

    /// `signerd run --config` for this installation, not yet started.
    pub(crate) fn run_command(&self) -> Command {
        let mut cmd = Command::new(SIGNERD);
        cmd.arg("run").arg("--config").arg(self.config_path());
        cmd
    }

    /// Starts the daemon and waits until it listens; panics with its stderr if it does not.
    pub(crate) fn start(&self) -> Daemon {
        Daemon::spawn(self.run_command()).unwrap_or_else(|e| panic!("signerd did not start: {e}"))
    }

    /// Client settings for `client` (a certificate name in `pki/`).
    pub(crate) fn settings(&self, d: &Daemon, client: &str) -> ClientSettings {
        let pki = self.dir.join("pki");
        ClientSettings {
            endpoint: d.endpoint(),
            ca: pki.join("ca.pem"),
            identity: Some((
                pki.join(format!("{client}.pem")),
                pki.join(format!("{client}-key.pem")),
            )),
            server_name: None,
        }
    }

    /// Connects as `client`; panics if the connection fails.
    pub(crate) async fn client(&self, d: &Daemon, client: &str) -> SignerClient<Channel> {
        connect(&self.settings(d, client))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting as {client}: {e}\nsignerd stderr:\n{}",
                    d.stderr()
                )
            })
    }

    /// The audit log as it is on disk now.
    pub(crate) fn audit(&self) -> Audit {
        Audit::read(&self.audit_dir())
    }

    /// Polls the audit log until `pred` holds (or [`AUDIT_WAIT`] passes) and returns it.
    pub(crate) fn wait_audit(&self, pred: impl Fn(&Audit) -> bool) -> Audit {
        wait_audit_in(&self.audit_dir(), pred)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test installation kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new, empty, unique directory (mode 0700) under the system temporary directory, named
/// for the test. It is not removed automatically: [`TestEnv`] removes it, or keeps it for
/// inspection when the test fails.
pub(crate) fn unique_dir(name: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("signerd-bb-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("a temporary directory for {name}: {e}"))
        .keep()
}

/// A running daemon (or any process that prints `signerd listening on ADDR`).
pub(crate) struct Daemon {
    child: Option<Child>,
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    out: Pumps,
}

/// Threads that copy a child's stdout (by line) and stderr into memory.
struct Pumps {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pumps {
    /// Starts pumping; the receiver gets each stdout line as it comes.
    fn start(child: &mut Child) -> (Pumps, mpsc::Receiver<String>) {
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        if let Some(out) = child.stdout.take() {
            let lines = stdout.clone();
            threads.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            let buf = stderr.clone();
            threads.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }));
        }
        (
            Pumps {
                stdout,
                stderr,
                threads,
            },
            rx,
        )
    }

    /// After the child exited: waits (bounded) until everything it printed has been read.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in std::mem::take(&mut self.threads) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// Spawns `cmd` with piped output and waits (bounded) for its listening line.
    pub(crate) fn spawn(cmd: Command) -> Result<Daemon, String> {
        Daemon::spawn_until(cmd, "signerd listening on ")
    }

    /// Spawns `cmd` (signerd, or another server such as `signerctl witness run`) and waits
    /// (bounded) for the stdout line `<listening> ADDR`.
    pub(crate) fn spawn_until(mut cmd: Command, listening: &str) -> Result<Daemon, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let (mut out, lines) = Pumps::start(&mut child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(listening) {
                        match addr.trim().parse::<SocketAddr>() {
                            Ok(a) => break a,
                            Err(e) => {
                                let _ = child.kill();
                                let _ = child.wait();
                                return Err(format!("bad listening line {line:?}: {e}"));
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut child, STOP_TIMEOUT);
                    out.drain();
                    return Err(format!(
                        "{cmd:?} exited ({status:?}) before listening; stderr:\n{}",
                        out.stderr()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{cmd:?} did not listen within {START_TIMEOUT:?}; stderr:\n{}",
                        out.stderr()
                    ));
                }
            }
        };
        Ok(Daemon {
            child: Some(child),
            addr,
            out,
        })
    }

    /// The process id (the daemon itself: every wrapper used here execs).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `https://ADDR`.
    pub(crate) fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Everything printed on stdout so far.
    pub(crate) fn stdout(&self) -> Vec<String> {
        self.out.stdout()
    }

    /// Everything printed on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.out.stderr()
    }

    /// Waits (bounded) until a stdout line satisfies `pred`.
    pub(crate) fn wait_stdout(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.stdout().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for the exit; SIGKILL if it does not come.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("daemon already stopped");
        };
        match terminate(&mut child) {
            Ok(status) => {
                self.out.drain();
                status
            }
            Err(e) => panic!("{e}; stderr:\n{}", self.stderr()),
        }
    }

    /// [`Daemon::stop`], also returning everything it printed on stderr.
    pub(crate) fn stop_logged(self) -> (ExitStatus, String) {
        let stderr = self.out.stderr.clone();
        let status = self.stop();
        let stderr = stderr.lock().unwrap().clone();
        (status, stderr)
    }
}

fn terminate(child: &mut Child) -> Result<ExitStatus, String> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    // libc is not a dependency; kill(1) sends the signal.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Some(status) = wait_bounded(child, STOP_TIMEOUT) {
        return Ok(status);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "pid {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed",
        child.id()
    ))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let result = terminate(&mut child);
            if std::thread::panicking() {
                eprintln!(
                    "--- signerd (pid {}) stop: {result:?}; stderr ---\n{}\n--- end of stderr ---",
                    child.id(),
                    self.stderr()
                );
            }
        }
    }
}

/// What a process that was expected to exit printed.
#[derive(Debug)]
pub(crate) struct Exited {
    /// Its exit status.
    pub(crate) status: ExitStatus,
    /// Its standard output.
    pub(crate) stdout: String,
    /// Its standard error.
    pub(crate) stderr: String,
}

/// Runs `cmd` to completion within `limit` (killed and reported as a failure otherwise).
pub(crate) fn run_to_exit(mut cmd: Command, limit: Duration) -> Exited {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let (mut out, _lines) = Pumps::start(&mut child);
    let Some(status) = wait_bounded(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        out.drain();
        panic!(
            "{cmd:?} did not exit within {limit:?}; stdout:\n{}\nstderr:\n{}",
            out.stdout().join("\n"),
            out.stderr()
        );
    };
    out.drain();
    Exited {
        status,
        stdout: out.stdout().join("\n"),
        stderr: out.stderr(),
    }
}

/// One line of the audit log: the exact bytes and their parse.
#[derive(Debug, Clone)]
pub(crate) struct AuditLine {
    /// The line without its newline.
    pub(crate) raw: String,
    /// The parsed record (`Null` for a line that is not JSON, e.g. a torn tail).
    pub(crate) v: Value,
}

/// The audit log read from disk (every `segment-*.jsonl`, in name order).
#[derive(Debug, Clone, Default)]
pub(crate) struct Audit {
    /// Every line.
    pub(crate) lines: Vec<AuditLine>,
}

impl Audit {
    /// Reads the segments in `dir` (an empty log if there are none).
    pub(crate) fn read(dir: &Path) -> Audit {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut lines = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_default();
            for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let raw = String::from_utf8_lossy(raw).into_owned();
                let v = serde_json::from_str(&raw).unwrap_or(Value::Null);
                lines.push(AuditLine { raw, v });
            }
        }
        Audit { lines }
    }

    /// Records of type `ty`.
    pub(crate) fn of_type(&self, ty: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .map(|l| &l.v)
            .filter(|v| v["type"] == ty)
            .collect()
    }

    /// Records about `req_id`.
    pub(crate) fn for_req(&self, req_id: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .map(|l| &l.v)
            .filter(|v| v["req_id"] == req_id)
            .collect()
    }

    /// How many records of type `ty` are about `req_id`.
    pub(crate) fn count(&self, ty: &str, req_id: &str) -> usize {
        self.for_req(req_id)
            .iter()
            .filter(|v| v["type"] == ty)
            .count()
    }

    /// `sign.result` statuses recorded for `req_id`.
    pub(crate) fn results(&self, req_id: &str) -> Vec<String> {
        self.for_req(req_id)
            .iter()
            .filter(|v| v["type"] == "sign.result")
            .map(|v| v["status"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// The line whose `seq` is `seq`.
    pub(crate) fn by_seq(&self, seq: u64) -> Option<&AuditLine> {
        self.lines.iter().find(|l| l.v["seq"].as_u64() == Some(seq))
    }

    /// The largest `seq`.
    pub(crate) fn max_seq(&self) -> Option<u64> {
        self.lines.iter().filter_map(|l| l.v["seq"].as_u64()).max()
    }

    /// Panics unless every parsed line has a distinct `seq` and they have no gaps.
    pub(crate) fn assert_seq_contiguous(&self) {
        let seqs: Vec<u64> = self
            .lines
            .iter()
            .filter_map(|l| l.v["seq"].as_u64())
            .collect();
        let set: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(set.len(), seqs.len(), "duplicate seq in the audit log");
        if let (Some(first), Some(last)) = (set.first(), set.last()) {
            assert_eq!(
                last - first + 1,
                set.len() as u64,
                "gap in audit seq numbers"
            );
        }
    }

    /// Panics unless nothing was signed for `req_id` according to the log.
    pub(crate) fn assert_not_signed(&self, req_id: &str) {
        let results = self.results(req_id);
        assert!(
            !results.iter().any(|s| s == "signed"),
            "request {req_id:?} has a `signed` result in the audit log: {results:?}"
        );
    }
}

/// Polls the audit log in `dir` until `pred` holds or [`AUDIT_WAIT`] passes.
pub(crate) fn wait_audit_in(dir: &Path, pred: impl Fn(&Audit) -> bool) -> Audit {
    let deadline = Instant::now() + AUDIT_WAIT;
    loop {
        let audit = Audit::read(dir);
        if pred(&audit) || Instant::now() >= deadline {
            return audit;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks a receipt against the log: the record at `seq` is the `sign.result` of `req_id`
/// with status `signed`, and the leaf hash is SHA-256(0x00 || its line bytes).
pub(crate) fn check_receipt(audit: &Audit, receipt: Option<&v1::AuditReceipt>, req_id: &str) {
    let receipt = receipt.unwrap_or_else(|| panic!("{req_id}: response has no audit receipt"));
    let line = audit.by_seq(receipt.seq).unwrap_or_else(|| {
        panic!(
            "{req_id}: receipt seq {} is not in the audit log",
            receipt.seq
        )
    });
    assert_eq!(
        line.v["type"], "sign.result",
        "{req_id}: record at the receipt's seq: {}",
        line.raw
    );
    assert_eq!(
        line.v["req_id"], req_id,
        "{req_id}: record at the receipt's seq: {}",
        line.raw
    );
    assert_eq!(
        line.v["status"], "signed",
        "{req_id}: record at the receipt's seq: {}",
        line.raw
    );
    assert_eq!(
        receipt.leaf_hash,
        leaf_hash(&line.raw).to_vec(),
        "{req_id}: leaf hash differs"
    );
}

/// RFC 6962 leaf hash of one audit line.
pub(crate) fn leaf_hash(line: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(line.as_bytes());
    h.finalize().into()
}

/// The standard request: EIP-1559 on chain 1, 1000 wei to [`TO`], signed by [`HOT`], with
/// no fee (max fee per gas 0), so that a native limit counts exactly its value. Tests of fees
/// set them.
pub(crate) fn eip1559(request_id: &str) -> v1::SignEvmTransactionRequest {
    v1::SignEvmTransactionRequest {
        dry_run: false,
        request_id: request_id.to_owned(),
        key_id: HOT.to_owned(),
        r#type: v1::EvmTransactionType::Eip1559.into(),
        chain_id: 1,
        nonce: 0,
        gas_limit: 21_000,
        gas_price: String::new(),
        max_fee_per_gas: "0".to_owned(),
        max_priority_fee_per_gas: "0".to_owned(),
        to: TO.to_owned(),
        value: "1000".to_owned(),
        data: Vec::new(),
        access_list: Vec::new(),
    }
}

/// A legacy (EIP-155) transaction request on chain 1, at 20 gwei per gas.
pub(crate) fn legacy(request_id: &str) -> v1::SignEvmTransactionRequest {
    v1::SignEvmTransactionRequest {
        dry_run: false,
        r#type: v1::EvmTransactionType::Legacy.into(),
        gas_price: "20000000000".to_owned(),
        max_fee_per_gas: String::new(),
        max_priority_fee_per_gas: String::new(),
        ..eip1559(request_id)
    }
}

/// The EVM address that signed `hash` with (r, s, y_parity), recovered with libsecp256k1.
pub(crate) fn recover_address(hash: &[u8], r: &[u8], s: &[u8], y_parity: u32) -> Address {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let hash: [u8; 32] = hash
        .try_into()
        .unwrap_or_else(|_| panic!("hash is {} bytes", hash.len()));
    assert_eq!(r.len(), 32, "r is {} bytes", r.len());
    assert_eq!(s.len(), 32, "s is {} bytes", s.len());
    assert!(y_parity <= 1, "y_parity {y_parity}");
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(r);
    compact[32..].copy_from_slice(s);
    let rec = RecoveryId::try_from(y_parity as i32).unwrap();
    let sig = RecoverableSignature::from_compact(&compact, rec).unwrap();
    let pk = sig.recover(&secp256k1::Message::from_digest(hash)).unwrap();
    let uncompressed = pk.serialize_uncompressed();
    Address::from_slice(&keccak256(&uncompressed[1..])[12..])
}

/// Half the secp256k1 group order: a normalized `s` is at most this.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// Checks an ECDSA signature over `hash` by the key at `address`: recovery, low s, and the
/// 65-byte `bytes` form when `with_bytes`.
pub(crate) fn check_ecdsa(
    sig: Option<&v1::Signature>,
    hash: &[u8],
    address: &str,
    with_bytes: bool,
) {
    let sig = sig.unwrap_or_else(|| panic!("response has no signature"));
    assert!(
        sig.s.as_slice() <= HALF_ORDER.as_slice(),
        "s is not low-s normalized"
    );
    let got = recover_address(hash, &sig.r, &sig.s, sig.y_parity);
    assert_eq!(
        got.to_checksum(None),
        address,
        "signature does not recover to the key's address"
    );
    if with_bytes {
        assert_eq!(sig.bytes.len(), 65);
        assert_eq!(&sig.bytes[..32], sig.r.as_slice());
        assert_eq!(&sig.bytes[32..64], sig.s.as_slice());
        assert_eq!(u32::from(sig.bytes[64]), 27 + sig.y_parity);
        assert_eq!(sig.v, 27 + u64::from(sig.y_parity));
    }
}

/// The status of a call that must fail; panics (showing the response) if it succeeded.
pub(crate) fn refused<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
) -> tonic::Status {
    match r {
        Ok(resp) => panic!("{what}: expected an error, got {:?}", resp.into_inner()),
        Err(s) => s,
    }
}

/// Panics unless `status` has `code` and a message containing `needle`.
pub(crate) fn assert_status(what: &str, status: &tonic::Status, code: tonic::Code, needle: &str) {
    assert_eq!(
        status.code(),
        code,
        "{what}: wrong code; message: {:?}",
        status.message()
    );
    assert!(
        status.message().contains(needle),
        "{what}: message {:?} does not contain {needle:?}",
        status.message()
    );
}

/// The key's EIP-55 address as the daemon reports it.
pub(crate) async fn address_of(client: &mut SignerClient<Channel>, key: &str) -> String {
    let k = client
        .get_key(v1::GetKeyRequest {
            key_id: key.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetKey {key}: {e}"))
        .into_inner();
    assert_eq!(
        k.evm_address.len(),
        42,
        "GetKey {key}: evm_address {:?}",
        k.evm_address
    );
    k.evm_address
}

/// The gRPC health status of `service` ("" for the whole server).
pub(crate) async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// `SERVING` in the health protocol.
pub(crate) const SERVING: i32 =
    tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
/// `NOT_SERVING` in the health protocol.
pub(crate) const NOT_SERVING: i32 =
    tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
/// The health service name of the signer.
pub(crate) const SIGNER_SERVICE: &str = "signer.v1.Signer";

/// Checks that a key held apart for the audit log (`name`) is invisible to clients: `ListKeys`
/// gives exactly `client_keys`, `GetKey` answers NOT_FOUND, and a signing request for it is
/// refused (`req_id`; the caller checks the audit log shows nothing signed for it).
pub(crate) async fn assert_audit_key_hidden(
    c: &mut SignerClient<Channel>,
    name: &str,
    client_keys: &[&str],
    req_id: &str,
) {
    let ids: Vec<String> = c
        .list_keys(v1::ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, client_keys, "ListKeys shows the audit key to clients");
    let st = refused(
        "GetKey of the audit key",
        c.get_key(v1::GetKeyRequest {
            key_id: name.to_owned(),
        })
        .await,
    );
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    let st = refused(
        "signing with the audit key",
        c.sign_digest(v1::SignDigestRequest {
            dry_run: false,
            request_id: req_id.to_owned(),
            key_id: name.to_owned(),
            digest: vec![7; 32],
        })
        .await,
    );
    assert_ne!(st.code(), tonic::Code::Ok);
}

/// A signing call racing others for the last of a limit.
pub(crate) type Racer =
    tokio::task::JoinHandle<Result<tonic::Response<v1::SignEvmTransactionResponse>, tonic::Status>>;

/// Awaits `racers`: how many signed (each with a transaction) and how many the limit `limit`
/// denied. Any other outcome fails the test.
pub(crate) async fn signed_and_denied(racers: Vec<Racer>, limit: &str) -> (usize, usize) {
    let (mut signed, mut denied) = (0, 0);
    for t in racers {
        match t.await.unwrap() {
            Ok(resp) => {
                assert!(!resp.into_inner().raw_transaction.is_empty());
                signed += 1;
            }
            Err(st) => {
                assert_status("over the limit", &st, tonic::Code::PermissionDenied, limit);
                denied += 1;
            }
        }
    }
    (signed, denied)
}

/// Requesters may sign with `hot`, at most `max_wei` wei of ETH per 24 h on chain 1 (the
/// limit `daily-eth`).
pub(crate) fn limited_policy(max_wei: u64) -> String {
    format!(
        r#"version = 1
serial = 1

[[rule]]
id = "requesters-hot"
effect = "allow"
roles = ["requester"]
keys = ["hot"]

[[limit]]
id = "daily-eth"
asset = "native"
chain_ids = [1]
window = "24h"
max_amount = "{max_wei} wei"
"#
    )
}
