//! A real PostgreSQL server for the tests of the `postgres` state backend, and the tests of that
//! harness itself.
//!
//! [`PgServer`] makes a fresh cluster per test (`initdb` into a temporary directory) that listens
//! only on 127.0.0.1, on a free port, never on a unix socket; it authenticates with SCRAM
//! passwords, runs with `fsync = on` (tests check durability across crashes) and, with
//! [`PgServer::start_tls`], accepts TLS connections only. It holds a `signerd` login role that
//! owns a `signerd` database, and a superuser for tests that change the schema by hand.
//!
//! The server binaries are found on `PATH` or under Debian's `/usr/lib/postgresql/<major>/bin`;
//! without them a test fails, saying what to install (`scripts/test` installs them). `initdb`
//! and `postgres` refuse to run as root, so a root test process runs them as the `postgres` user
//! (`setpriv`) on a data directory owned by that user. Every wait is bounded, and the server is
//! stopped when its handle drops; no secret is printed, not even in a failure message.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand_core::RngCore;
use signerd::tls::pki::DevCa;

use crate::util::{Exited, unique_dir, write_file};

/// The role and the database a signerd installation uses.
const ROLE: &str = "signerd";
/// The database of [`ROLE`].
const DB: &str = "signerd";
/// The cluster's superuser.
const SUPERUSER: &str = "postgres";
/// The account the server runs as when the tests run as root.
const SERVER_ACCOUNT: &str = "postgres";
/// The server programs the harness needs, all from one installation.
const PROGRAMS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

/// How long `pg_ctl` waits for the server to start or stop (`-t`), in seconds.
const PG_CTL_WAIT_SECS: u64 = 60;
/// How long any one server program may run; `pg_ctl` gives up before this.
const COMMAND_LIMIT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS + 15);
/// How long a started server may take to accept a connection.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How many fresh ports a first start tries when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// The ports a server is given: below Linux's ephemeral range (32768-60999), where every other
/// test server binds port 0, so the port of a stopped server stays free for `start_again`.
const PORTS: std::ops::Range<u16> = 20000..32768;
/// The most output read from one command.
const MAX_OUTPUT: u64 = 1 << 20;

/// A PostgreSQL server of one test, stopped and removed on drop (kept for inspection when the
/// test fails).
pub(crate) struct PgServer {
    /// The test's directory: the password file and the CA here; the cluster under `pg/`.
    dir: PathBuf,
    /// `dir/pg`: owned by the server account, holds the data directory and the server log.
    pg: PathBuf,
    /// The data directory.
    data: PathBuf,
    /// The server log (`pg_ctl -l`).
    log: PathBuf,
    /// The directory of the server programs.
    bin: &'static Path,
    /// The server account's uid and gid when the tests run as root.
    account: Option<(u32, u32)>,
    port: u16,
    superuser_password: String,
    password: String,
    password_file: PathBuf,
    /// The CA of the server certificate, for a TLS server.
    ca_file: Option<PathBuf>,
}

impl PgServer {
    /// A new server accepting plain TCP connections.
    pub(crate) fn start(name: &str) -> PgServer {
        PgServer::new(name, false)
    }

    /// A new server accepting TLS connections only (`hostssl`), with a certificate for
    /// `127.0.0.1` and `localhost` issued by a new CA ([`PgServer::ca_file`]).
    pub(crate) fn start_tls(name: &str) -> PgServer {
        PgServer::new(name, true)
    }

    fn new(name: &str, tls: bool) -> PgServer {
        let bin = bin_dir();
        let account = server_account();
        let dir = unique_dir(&format!("pg-{name}"));
        let pg = dir.join("pg");
        let mut server = PgServer {
            data: pg.join("data"),
            log: pg.join("server.log"),
            pg,
            dir,
            bin,
            account,
            port: 0,
            superuser_password: random_password(),
            password: random_password(),
            password_file: PathBuf::new(),
            ca_file: None,
        };
        server.password_file = server.dir.join("signerd.pass");
        write_file(
            &server.password_file,
            format!("{}\n", server.password).as_bytes(),
            0o600,
        );
        if account.is_some() {
            // The server account passes through the test's directory to reach `pg/`.
            set_mode(&server.dir, 0o711);
        }
        std::fs::create_dir(&server.pg).unwrap();
        set_mode(&server.pg, 0o700);
        server.give_to_server(&server.pg);
        server.initdb();
        server.write_hba(tls);
        if tls {
            server.write_certificate();
        }
        server.start_on_a_free_port(tls);
        server.create_role_and_database();
        server
    }

    /// The port it listens on (on 127.0.0.1).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The password of the `signerd` role.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// A file (mode 0600, owned by the test process) holding the `signerd` role's password.
    pub(crate) fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// The password of the superuser `postgres`.
    pub(crate) fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// The CA certificate (PEM) of a TLS server's certificate.
    pub(crate) fn ca_file(&self) -> &Path {
        self.ca_file
            .as_deref()
            .unwrap_or_else(|| panic!("a PgServer without TLS has no CA: use PgServer::start_tls"))
    }

    /// The `[state]` section of a signerd configuration that keeps its state here.
    pub(crate) fn state_toml(&self) -> String {
        let mut toml = format!(
            "[state]\n\
             backend = \"postgres\"\n\
             \n\
             [state.postgres]\n\
             host = \"127.0.0.1\"\n\
             port = {}\n\
             user = \"{ROLE}\"\n\
             dbname = \"{DB}\"\n\
             password_file = {}\n",
            self.port,
            toml_string(&self.password_file),
        );
        if let Some(ca) = &self.ca_file {
            toml.push_str("tls = \"verify-full\"\n");
            toml.push_str(&format!("ca_file = {}\n", toml_string(ca)));
        }
        toml
    }

    /// Runs `sql` with `psql` as the superuser in the `signerd` database and returns what it
    /// printed (unaligned, tuples only, without the final newline); panics if it fails.
    pub(crate) fn psql(&self, sql: &str) -> String {
        let out = self.psql_as(SUPERUSER, &self.superuser_password, DB, "", sql);
        if !out.status.success() {
            panic!(
                "psql as {SUPERUSER} failed ({}) running {sql:?}:\n{}\n{}",
                out.status,
                out.stderr,
                self.log_tail()
            );
        }
        out.stdout.trim_end_matches('\n').to_owned()
    }

    /// Runs `sql` with `psql` as `user` with `password` in the `signerd` database, with the
    /// connection parameters `conninfo` (for example `sslmode=disable`) overriding the
    /// harness's own (host, port, and for a TLS server `sslmode=verify-full` with the CA).
    pub(crate) fn psql_with(
        &self,
        user: &str,
        password: &str,
        conninfo: &str,
        sql: &str,
    ) -> Exited {
        self.psql_as(user, password, DB, conninfo, sql)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, as in a
    /// crash; what was committed must come back from the write-ahead log).
    pub(crate) fn stop(&mut self) {
        if let Err(e) = self.pg_ctl_stop() {
            panic!("stopping PostgreSQL: {e}\n{}", self.log_tail());
        }
    }

    /// Starts the stopped server again on the same data directory and port.
    pub(crate) fn start_again(&mut self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!(
                "starting PostgreSQL again on port {}: {e}\n{}",
                self.port,
                self.log_tail()
            );
        }
        self.wait_ready();
    }

    fn initdb(&self) {
        // initdb reads the superuser password from a file the server account can read; it
        // is removed right after.
        let pwfile = self.pg.join("superuser.pass");
        write_file(
            &pwfile,
            format!("{}\n", self.superuser_password).as_bytes(),
            0o600,
        );
        self.give_to_server(&pwfile);
        let mut cmd = self.server_command("initdb");
        cmd.arg("--pgdata")
            .arg(&self.data)
            .arg(format!("--username={SUPERUSER}"))
            .arg("--pwfile")
            .arg(&pwfile)
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"]);
        let out = run(cmd, "initdb", COMMAND_LIMIT);
        std::fs::remove_file(&pwfile).unwrap();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "initdb failed ({}):\n{}\n{}",
                out.status, out.stdout, out.stderr
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Password logins over TCP from 127.0.0.1 only; with `tls`, only over TLS.
    fn write_hba(&self, tls: bool) {
        let hba = if tls {
            "hostssl all all 127.0.0.1/32 scram-sha-256\n\
             hostnossl all all all reject\n"
        } else {
            "host all all 127.0.0.1/32 scram-sha-256\n"
        };
        // Overwriting keeps the file's owner (the server account) and mode.
        std::fs::write(self.data.join("pg_hba.conf"), hba).unwrap();
    }

    /// The server's certificate and key in the data directory, and the CA in the test's
    /// directory.
    fn write_certificate(&mut self) {
        let ca = DevCa::generate("signerd blackbox PostgreSQL CA").unwrap();
        let server = ca.issue_server(&["127.0.0.1", "localhost"]).unwrap();
        let ca_file = self.dir.join("pg-ca.pem");
        write_file(&ca_file, ca.cert_pem().as_bytes(), 0o644);
        for (file, pem) in [
            ("server.crt", &server.cert_pem),
            ("server.key", &server.key_pem),
        ] {
            // PostgreSQL refuses a key that is not private to the server account.
            let path = self.data.join(file);
            write_file(&path, pem.as_bytes(), 0o600);
            self.give_to_server(&path);
        }
        self.ca_file = Some(ca_file);
    }

    /// The settings of `port`, in a file included from `postgresql.conf` (so a retry on
    /// another port rewrites it). The log never shows a failed statement: it may hold a
    /// password, and failure messages print the log.
    fn write_settings(&self, tls: bool) {
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = ''\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             password_encryption = 'scram-sha-256'\n\
             shared_buffers = '16MB'\n\
             log_min_error_statement = panic\n",
            self.port
        );
        if tls {
            conf.push_str(
                "ssl = on\n\
                 ssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\n\
                 ssl_min_protocol_version = 'TLSv1.2'\n",
            );
        }
        let path = self.data.join("harness.conf");
        write_file(&path, conf.as_bytes(), 0o600);
        self.give_to_server(&path);
    }

    fn start_on_a_free_port(&mut self, tls: bool) {
        use std::io::Write;
        let mut main_conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        main_conf.write_all(b"\ninclude 'harness.conf'\n").unwrap();
        let mut attempt = 1;
        loop {
            self.port = free_port();
            self.write_settings(tls);
            match self.pg_ctl_start() {
                Ok(()) => break,
                // Another process took the port between the check and the start.
                Err(_) if attempt < PORT_ATTEMPTS && self.log_says_port_taken() => attempt += 1,
                Err(e) => panic!(
                    "starting PostgreSQL on port {}: {e}\n{}",
                    self.port,
                    self.log_tail()
                ),
            }
        }
        self.wait_ready();
    }

    fn log_says_port_taken(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains("could not bind"))
    }

    fn create_role_and_database(&self) {
        for sql in [
            format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", self.password),
            format!("CREATE DATABASE {DB} OWNER {ROLE}"),
        ] {
            let out = self.psql_as(SUPERUSER, &self.superuser_password, "postgres", "", &sql);
            if !out.status.success() {
                // Not the statement: it may hold the password.
                panic!(
                    "setting up the {ROLE} role and database failed ({}):\n{}",
                    out.status, out.stderr
                );
            }
        }
    }

    /// Waits (bounded) until the superuser can run a query.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let out = self.psql_as(
                SUPERUSER,
                &self.superuser_password,
                "postgres",
                "connect_timeout=5",
                "SELECT 1",
            );
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL on port {} accepted no connection within {READY_LIMIT:?}: {}\n{}",
                    self.port,
                    out.stderr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("start")
            .arg("--pgdata")
            .arg(&self.data)
            .arg("--log")
            .arg(&self.log)
            .args(["--wait", "--timeout", &PG_CTL_WAIT_SECS.to_string()]);
        let out = run(cmd, "pg_ctl start", COMMAND_LIMIT)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed ({}):\n{}{}",
                out.status, out.stdout, out.stderr
            ))
        }
    }

    fn pg_ctl_stop(&self) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop")
            .arg("--pgdata")
            .arg(&self.data)
            .args(["--mode", "immediate", "--wait"])
            .args(["--timeout", &PG_CTL_WAIT_SECS.to_string()]);
        let out = run(cmd, "pg_ctl stop", COMMAND_LIMIT)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop failed ({}):\n{}{}",
                out.status, out.stdout, out.stderr
            ))
        }
    }

    fn psql_as(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
        conninfo: &str,
        sql: &str,
    ) -> Exited {
        let exe = self.bin.join("psql");
        let mut cmd = Command::new(&exe);
        let tls = match &self.ca_file {
            Some(ca) => format!("sslmode=verify-full sslrootcert='{}'", ca.display()),
            None => "sslmode=disable".to_owned(),
        };
        cmd.args(["--no-psqlrc", "--quiet", "--no-align", "--tuples-only"])
            .args(["--set", "ON_ERROR_STOP=1"])
            .arg("--dbname")
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname={dbname} connect_timeout=10 {tls} {conninfo}",
                self.port
            ))
            .arg("--command")
            .arg(sql)
            .env("PGPASSWORD", password);
        clean_env(&mut cmd);
        match run(cmd, "psql", COMMAND_LIMIT) {
            Ok(out) => out,
            Err(e) => panic!("{e}\n{}", self.log_tail()),
        }
    }

    /// A server program, run as the server account when the tests run as root.
    fn server_command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = if self.account.is_some() {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={SERVER_ACCOUNT}"))
                .arg(format!("--regid={SERVER_ACCOUNT}"))
                .args(["--init-groups", "--"])
                .arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        // The test's working directory may be closed to the server account.
        cmd.current_dir(&self.pg);
        clean_env(&mut cmd);
        cmd
    }

    /// Makes `path` the server account's when the tests run as root.
    fn give_to_server(&self, path: &Path) {
        if let Some((uid, gid)) = self.account {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// The end of the server log, for failure messages.
    fn log_tail(&self) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!(
                    "--- end of the PostgreSQL log {} ---\n{tail}\n--- end ---",
                    self.log.display()
                )
            }
            Err(e) => format!("(no PostgreSQL log {}: {e})", self.log.display()),
        }
    }

    /// The postmaster's pid while the data directory is in use.
    fn postmaster_pid(&self) -> Option<u32> {
        let lock = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        lock.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.postmaster_pid().is_some()
            && let Err(e) = self.pg_ctl_stop()
        {
            eprintln!("{e}");
            // Never leave a server behind: its backends exit when the postmaster dies.
            if let Some(pid) = self.postmaster_pid() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "PostgreSQL test cluster kept for inspection: {}\n{}",
                self.dir.display(),
                self.log_tail()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The directory of the PostgreSQL server programs: where the `initdb` on `PATH` really lives,
/// else the newest `/usr/lib/postgresql/<major>/bin` (Debian keeps them off `PATH`).
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf));
        let debian = || {
            std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .flatten()
                .filter_map(|e| {
                    let major: u32 = e.file_name().to_str()?.parse().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").is_file())
                .max_by_key(|(major, _)| *major)
                .map(|(_, bin)| bin)
        };
        let Some(bin) = on_path.or_else(debian) else {
            panic!(
                "PostgreSQL's server programs are not installed (no initdb on PATH or under \
                 /usr/lib/postgresql/*/bin): install them, on Debian/Ubuntu with \
                 `apt-get install postgresql` (scripts/test does it)"
            );
        };
        let missing: Vec<&str> = PROGRAMS
            .into_iter()
            .filter(|p| !bin.join(p).is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "{} has initdb but not {}: install the whole PostgreSQL server (Debian/Ubuntu: \
             `apt-get install postgresql`)",
            bin.display(),
            missing.join(", ")
        );
        bin
    })
}

/// The server account's uid and gid when the tests run as root (PostgreSQL refuses to run as
/// root); `None` otherwise.
fn server_account() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, SERVER_ACCOUNT])
            .output()
            .unwrap_or_else(|e| panic!("running id: {e}"));
        assert!(
            out.status.success(),
            "the tests run as root, so PostgreSQL runs as the `{SERVER_ACCOUNT}` user, which \
             does not exist: install Debian's `postgresql` package (it creates the user)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

/// A free port in [`PORTS`] not given to another server of this process.
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap();
    let span = u32::from(PORTS.end - PORTS.start);
    for _ in 0..1000 {
        let offset = u16::try_from(rand_core::OsRng.next_u32() % span).unwrap();
        let port = PORTS.start + offset;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORTS:?} after 1000 tries");
}

/// 32 random hex digits.
fn random_password() -> String {
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `path` as a TOML string.
fn toml_string(path: &Path) -> String {
    let path = path.to_str().expect("temporary paths are UTF-8");
    toml::Value::String(path.to_owned()).to_string()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// No `PG*` variable of the caller's environment (PGHOST, PGSSLMODE, ...) changes what the
/// programs connect to; messages in English, whatever the locale.
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PG") && name != "PGPASSWORD" {
            cmd.env_remove(name);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// Runs `cmd` within `limit` (killed otherwise); its output goes through anonymous files, so a
/// server it leaves running cannot hold a pipe open. `what` names it in errors (a command's
/// `Debug` would show its environment, with the password).
fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<Exited, String> {
    let files = || tempfile::tempfile().map_err(|e| format!("{what}: a temporary file: {e}"));
    let (mut stdout, mut stderr) = (files()?, files()?);
    let clone = |f: &std::fs::File| f.try_clone().map_err(|e| format!("{what}: {e}"));
    cmd.stdin(Stdio::null())
        .stdout(clone(&stdout)?)
        .stderr(clone(&stderr)?);
    let mut child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not exit within {limit:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut std::fs::File| {
        let mut text = String::new();
        f.rewind()
            .and_then(|()| f.take(MAX_OUTPUT).read_to_string(&mut text))
            .map_err(|e| format!("{what}: reading its output: {e}"))?;
        Ok::<_, String>(text)
    };
    Ok(Exited {
        status,
        stdout: read(&mut stdout)?,
        stderr: read(&mut stderr)?,
    })
}

#[test]
fn a_server_starts_and_psql_works() {
    let pg = PgServer::start("starts");
    assert_eq!(pg.psql("SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("SELECT current_database()"), DB);
    // Loopback only, no unix socket, durable commits.
    assert_eq!(pg.psql("SHOW listen_addresses"), "127.0.0.1");
    assert_eq!(pg.psql("SHOW unix_socket_directories"), "");
    assert_eq!(pg.psql("SHOW fsync"), "on");
    assert_eq!(pg.psql("SHOW synchronous_commit"), "on");
    assert_eq!(pg.psql("SHOW port"), pg.port().to_string());
    // The database belongs to a role that logs in with its password but is no superuser.
    assert_eq!(
        pg.psql(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ),
        ROLE
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = '{ROLE}'"
        )),
        "f|t"
    );
    let out = pg.psql_with(
        ROLE,
        pg.password(),
        "",
        "CREATE TABLE t (x int); SELECT current_user",
    );
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), ROLE);
}

#[test]
fn passwords_are_checked() {
    let pg = PgServer::start("passwords");
    let out = pg.psql_with(ROLE, "not-the-password", "", "SELECT 1");
    assert!(!out.status.success(), "a wrong password was accepted");
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );
    // The superuser is reachable with its own password only.
    let out = pg.psql_with(SUPERUSER, pg.password(), "", "SELECT 1");
    assert!(
        !out.status.success(),
        "the superuser logged in with the signerd password"
    );
    let out = pg.psql_with(SUPERUSER, pg.superuser_password(), "", "SELECT 1");
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn two_servers_get_two_ports() {
    let a = PgServer::start("two-a");
    let b = PgServer::start("two-b");
    assert_ne!(a.port(), b.port());
    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(
        a.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "1"
    );
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "0"
    );
    assert_ne!(a.password(), b.password());
}

#[test]
fn committed_data_survives_a_crash() {
    let mut pg = PgServer::start("crash");
    let port = pg.port();
    pg.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)");
    pg.stop();
    let out = pg.psql_with(
        SUPERUSER,
        pg.superuser_password(),
        "connect_timeout=2",
        "SELECT 1",
    );
    assert!(!out.status.success(), "the stopped server still answers");
    pg.start_again();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT x FROM kept"), "42");
    // An immediate stop skips the shutdown checkpoint: the row came back from the WAL.
    assert!(
        pg.log_tail().contains("not properly shut down"),
        "no crash recovery ran:\n{}",
        pg.log_tail()
    );
}

#[test]
fn the_state_section_names_the_server() {
    let pg = PgServer::start("toml");
    let expected = format!(
        "[state]\nbackend = \"postgres\"\n\n[state.postgres]\nhost = \"127.0.0.1\"\n\
         port = {}\nuser = \"signerd\"\ndbname = \"signerd\"\npassword_file = \"{}\"\n",
        pg.port(),
        pg.password_file().display()
    );
    assert_eq!(pg.state_toml(), expected);
    assert_eq!(crate::util::mode_of(pg.password_file()), 0o600);
    assert_eq!(
        std::fs::read_to_string(pg.password_file()).unwrap(),
        format!("{}\n", pg.password())
    );
    let parsed: toml::Table = pg.state_toml().parse().unwrap();
    assert_eq!(
        parsed["state"]["postgres"]["port"].as_integer(),
        Some(i64::from(pg.port()))
    );
}

#[test]
fn a_tls_server_refuses_plain_connections() {
    let pg = PgServer::start_tls("tls");
    // The harness's own connections verify the server against the CA.
    assert_eq!(
        pg.psql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
        "t"
    );
    let plain = pg.psql_with(ROLE, pg.password(), "sslmode=disable", "SELECT 1");
    assert!(!plain.status.success(), "a plain connection was accepted");
    assert!(plain.stderr.contains("no encryption"), "{}", plain.stderr);
    let verified = pg.psql_with(
        ROLE,
        pg.password(),
        &format!(
            "sslmode=verify-full sslrootcert='{}'",
            pg.ca_file().display()
        ),
        "SELECT current_user",
    );
    assert!(verified.status.success(), "{}", verified.stderr);
    assert_eq!(verified.stdout.trim(), ROLE);
    // Another CA's view of the server fails verification.
    let other = DevCa::generate("another CA").unwrap();
    let other_ca = pg.dir.join("other-ca.pem");
    write_file(&other_ca, other.cert_pem().as_bytes(), 0o644);
    let unverified = pg.psql_with(
        ROLE,
        pg.password(),
        &format!("sslmode=verify-full sslrootcert='{}'", other_ca.display()),
        "SELECT 1",
    );
    assert!(
        !unverified.status.success(),
        "a server certificate of another CA was accepted"
    );
    assert!(
        unverified.stderr.contains("certificate verify failed"),
        "{}",
        unverified.stderr
    );
    let expected_tail = format!(
        "tls = \"verify-full\"\nca_file = \"{}\"\n",
        pg.ca_file().display()
    );
    assert!(
        pg.state_toml().ends_with(&expected_tail),
        "{}",
        pg.state_toml()
    );
}
