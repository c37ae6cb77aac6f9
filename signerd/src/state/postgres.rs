//! The shared [`StateStore`] on PostgreSQL, for replicas: every signerd instance that names the
//! same database shares its limits, its idempotency records and its requests waiting for
//! approval.
//!
//! Every write is one transaction and durable when it returns (the server's
//! `synchronous_commit`, on by default). What keeps replicas from stepping on each other:
//! - Reservations: [`StateStore::reserve`] takes a transaction-scoped advisory lock per limit
//!   bucket (in one order, so two requests cannot deadlock), sums the bucket's window and
//!   inserts, all in one transaction: no two replicas can both fit into the last of a limit.
//! - Claims: a replica works on a (client, request_id) only while it holds the row of that
//!   request in `signerd_claims`; another replica waits for it. A claim lapses
//!   [`CLAIM_LEASE`] after its holder last renewed it (every third of that), so a request left
//!   half-done by a replica that died can be taken over.
//! - Times that decide between replicas (claims) are the database's `now()`, never a
//!   replica's clock.
//!
//! The schema is versioned ([`SCHEMA_VERSION`]): signerd creates and migrates it at start, one
//! replica at a time, and refuses a database whose schema is newer than it knows.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use alloy_primitives::U256;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;

use super::spend::{Charge, Entry, Exceeded, Spend, Used};
use super::{
    Claim, LogBinding, Lookup, PendingRecord, Pruned, StateError, StateStore, StoredRequest,
    UsageQuery, Verdict, verdict,
};
use crate::config::{PgTls, PostgresConfig};

/// The schema version this release writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// How long a claim holds after its holder last renewed it. A request whose replica died is
/// taken over by another this long after the death, at the latest.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10);

/// Longest client id or request id, in bytes (both are validated far below this upstream).
const MAX_KEY_PART_BYTES: usize = 1024;

/// The advisory lock that makes one replica at a time create or migrate the schema.
const MIGRATION_LOCK: i64 = 0x7369_676e_6572_6400;

/// The migrations, in order: `MIGRATIONS[n]` brings the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: requests, expiry markers, reservations, approvals, claims, log bindings.
    "CREATE TABLE signerd_requests (
        client text NOT NULL,
        request_id text NOT NULL,
        record text NOT NULL,
        answered_at bigint,
        signed boolean NOT NULL,
        PRIMARY KEY (client, request_id)
    );
    CREATE INDEX signerd_requests_answered_at ON signerd_requests (answered_at);
    CREATE TABLE signerd_expired (
        client text NOT NULL,
        request_id text NOT NULL,
        answered_at bigint NOT NULL,
        PRIMARY KEY (client, request_id)
    );
    CREATE TABLE signerd_spend (
        client text NOT NULL,
        request_id text NOT NULL,
        bucket text NOT NULL,
        ts bigint NOT NULL,
        amount numeric(78, 0) NOT NULL CHECK (amount >= 0)
    );
    CREATE INDEX signerd_spend_bucket_ts ON signerd_spend (bucket, ts);
    CREATE INDEX signerd_spend_owner ON signerd_spend (client, request_id);
    CREATE TABLE signerd_pending (
        client text NOT NULL,
        request_id text NOT NULL,
        record text NOT NULL,
        open boolean NOT NULL,
        PRIMARY KEY (client, request_id)
    );
    CREATE INDEX signerd_pending_open ON signerd_pending (client, request_id) WHERE open;
    CREATE TABLE signerd_claims (
        client text NOT NULL,
        request_id text NOT NULL,
        holder text NOT NULL,
        token bigint NOT NULL,
        expires timestamptz NOT NULL,
        PRIMARY KEY (client, request_id)
    );
    CREATE INDEX signerd_claims_holder ON signerd_claims (holder);
    CREATE TABLE signerd_log_bindings (
        origin text PRIMARY KEY,
        binding text NOT NULL
    );
    CREATE TABLE signerd_probe (
        origin text PRIMARY KEY,
        at timestamptz NOT NULL
    );",
];

/// [`StateStore`] on a PostgreSQL database that replicas share. Each replica is named by its
/// audit log's origin (`[audit] origin`), which must differ between replicas.
pub struct PostgresStore {
    pool: Pool,
    /// This replica: its audit log's origin.
    origin: String,
    /// Longest wait for any one call.
    timeout: Duration,
    /// Tokens of this process's claims.
    tokens: AtomicI64,
    /// Renews this replica's claims; stopped with the store.
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn pg_err(what: &str, e: &tokio_postgres::Error) -> StateError {
    // The driver's own text says "db error" for a server's refusal; the server's message is
    // what an operator needs.
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    };
    StateError::Unavailable(format!("PostgreSQL: {what}: {detail}"))
}

fn pool_err(e: &deadpool_postgres::PoolError) -> StateError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err("connect", e),
        deadpool_postgres::PoolError::Timeout(_) => {
            StateError::Unavailable("PostgreSQL: no connection within the timeout".into())
        }
        other => StateError::Unavailable(format!("PostgreSQL: {other}")),
    }
}

fn check_key(client: &str, request_id: &str) -> Result<(), StateError> {
    for part in [client, request_id] {
        if part.contains('\0') || part.len() > MAX_KEY_PART_BYTES {
            return Err(StateError::InvalidKey(
                "a NUL byte, or longer than 1024 bytes".into(),
            ));
        }
    }
    Ok(())
}

fn encode<T: serde::Serialize>(what: &str, rec: &T) -> Result<String, StateError> {
    serde_json::to_string(rec).map_err(|e| StateError::Unavailable(format!("encode {what}: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    client: &str,
    request_id: &str,
    text: &str,
) -> Result<T, StateError> {
    serde_json::from_str(text).map_err(|e| {
        StateError::Corrupt(format!(
            "{what}[{client}, {request_id}]: cannot decode the stored value: {e}"
        ))
    })
}

fn amount(text: &str) -> Result<U256, StateError> {
    U256::from_str_radix(text, 10)
        .map_err(|e| StateError::Corrupt(format!("signerd_spend: amount `{text}`: {e}")))
}

/// The usage of each (bucket, since) pair, leaving out (`$3`, `$4`)'s reservations.
const USAGE_SQL: &str = "SELECT coalesce(sum(s.amount), 0)::text, count(s.bucket)
    FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS q(bucket, since, i)
    LEFT JOIN signerd_spend s ON s.bucket = q.bucket AND s.ts > q.since
        AND NOT (s.client = $3 AND s.request_id = $4)
    GROUP BY q.i ORDER BY q.i";

impl PostgresStore {
    /// Connects to the database of `cfg` as the replica `origin`, and creates or migrates the
    /// schema. Errors say what failed and where, never the password.
    pub async fn open(cfg: &PostgresConfig, origin: &str) -> Result<PostgresStore, StateError> {
        PostgresStore::connect(cfg, origin, true).await
    }

    /// Connects to a database whose schema signerd already created, for reading (the
    /// cross-check): nothing is created or migrated, and a schema of another version is
    /// refused.
    pub async fn open_existing(
        cfg: &PostgresConfig,
        origin: &str,
    ) -> Result<PostgresStore, StateError> {
        PostgresStore::connect(cfg, origin, false).await
    }

    async fn connect(
        cfg: &PostgresConfig,
        origin: &str,
        create: bool,
    ) -> Result<PostgresStore, StateError> {
        let password = cfg
            .password_source()
            .read("state.postgres.password")
            .map_err(StateError::Unavailable)?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&cfg.host)
            .port(cfg.port)
            .user(&cfg.user)
            .dbname(&cfg.dbname)
            .password(password.expose_secret().as_bytes())
            .application_name("signerd")
            .connect_timeout(cfg.timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
            // The server gives up on a statement the replica gave up on.
            .options(format!("-c statement_timeout={}", cfg.timeout.as_millis()));
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match cfg.tls {
            PgTls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
            }
            PgTls::VerifyFull => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = client_tls(cfg)?;
                Manager::from_config(
                    pg,
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                    manager_config,
                )
            }
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.timeout))
            .create_timeout(Some(cfg.timeout))
            .recycle_timeout(Some(cfg.timeout))
            .build()
            .map_err(|e| StateError::Unavailable(format!("PostgreSQL: pool: {e}")))?;
        let where_ = format!("{}@{}:{}/{}", cfg.user, cfg.host, cfg.port, cfg.dbname);
        migrate(&pool, cfg.timeout, create)
            .await
            .map_err(|e| match e {
                StateError::Unavailable(m) => {
                    StateError::Unavailable(format!("{m} (database {where_})"))
                }
                other => other,
            })?;
        let renewer = tokio::spawn(renew(pool.clone(), origin.to_owned(), cfg.timeout));
        Ok(PostgresStore {
            pool,
            origin: origin.to_owned(),
            timeout: cfg.timeout,
            tokens: AtomicI64::new(1),
            renewer,
        })
    }

    /// Every committed answer that is a signature: (client, request_id, answer). Read in
    /// pages in key order, each one statement within the call timeout, however large the
    /// table.
    pub async fn signed_answers(&self) -> Result<Vec<(String, String, StoredRequest)>, StateError> {
        const PAGE: i64 = 10_000;
        let mut out = Vec::new();
        let (mut client, mut request_id) = (String::new(), String::new());
        loop {
            let rows = self
                .rows(
                    "read the signed answers",
                    "SELECT client, request_id, record FROM signerd_requests
                     WHERE signed AND (client, request_id) > ($1, $2)
                     ORDER BY client, request_id LIMIT $3",
                    &[&client, &request_id, &PAGE],
                )
                .await?;
            for r in &rows {
                let (c, id): (String, String) = (r.get(0), r.get(1));
                let rec: StoredRequest = decode("signerd_requests", &c, &id, r.get(2))?;
                (client, request_id) = (c.clone(), id.clone());
                out.push((c, id, rec));
            }
            if rows.len() < PAGE as usize {
                return Ok(out);
            }
        }
    }

    /// Runs `f` on a pooled connection, within the timeout.
    async fn with<T, F>(&self, f: F) -> Result<T, StateError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StateError>,
    {
        let work = async {
            let mut client = self.pool.get().await.map_err(|e| pool_err(&e))?;
            f(&mut client).await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                StateError::Unavailable(format!(
                    "PostgreSQL: no answer within {}",
                    humantime::format_duration(self.timeout)
                ))
            })?
    }

    /// Checks every charge against its window without the owner's own reservations and, when
    /// all fit, replaces the owner's reservations with them; on refusal nothing changes.
    async fn replace_reservations(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        check_key(client, request_id)?;
        let mut buckets: Vec<String> = charges
            .iter()
            .map(|c| c.bucket.as_str().to_owned())
            .collect();
        buckets.sort();
        buckets.dedup();
        let names: Vec<String> = charges
            .iter()
            .map(|c| c.bucket.as_str().to_owned())
            .collect();
        let since: Vec<i64> = charges.iter().map(|c| since(now, c.window_secs)).collect();
        let recorded: Vec<&Charge> = charges.iter().filter(|c| c.window_secs > 0).collect();
        let new_buckets: Vec<String> = recorded
            .iter()
            .map(|c| c.bucket.as_str().to_owned())
            .collect();
        let new_amounts: Vec<String> = recorded.iter().map(|c| c.amount.to_string()).collect();
        self.with(async |c| {
            let tx = c.transaction().await.map_err(|e| pg_err("begin", &e))?;
            let lock = tx
                .prepare_cached(
                    "SELECT count(pg_advisory_xact_lock(hashtextextended(b, 0)))
                     FROM unnest($1::text[]) WITH ORDINALITY AS t(b, i)",
                )
                .await
                .map_err(|e| pg_err("prepare", &e))?;
            tx.query_one(&lock, &[&buckets])
                .await
                .map_err(|e| pg_err("lock the limits", &e))?;
            let usage = tx
                .prepare_cached(USAGE_SQL)
                .await
                .map_err(|e| pg_err("prepare", &e))?;
            let rows = tx
                .query(&usage, &[&names, &since, &client, &request_id])
                .await
                .map_err(|e| pg_err("read the limits", &e))?;
            if rows.len() != charges.len() {
                return Err(StateError::Corrupt(format!(
                    "signerd_spend: {} usages for {} charges",
                    rows.len(),
                    charges.len()
                )));
            }
            for (charge, row) in charges.iter().zip(&rows) {
                let used = used_of(row)?;
                if let Some(detail) = charge.exceeded(used) {
                    // Dropping the transaction rolls it back: nothing changed. BEGIN, the
                    // locks, the usage and ROLLBACK.
                    crate::metrics::db_round_trips(4);
                    return Ok(Err(Exceeded {
                        limit_id: charge.limit_id.clone(),
                        detail,
                    }));
                }
            }
            let write = tx
                .prepare_cached(
                    "WITH gone AS (
                        DELETE FROM signerd_spend WHERE client = $1 AND request_id = $2
                    )
                    INSERT INTO signerd_spend (client, request_id, bucket, ts, amount)
                    SELECT $1, $2, b, $3, a::numeric FROM unnest($4::text[], $5::text[]) AS t(b, a)",
                )
                .await
                .map_err(|e| pg_err("prepare", &e))?;
            tx.execute(&write, &[&client, &request_id, &now, &new_buckets, &new_amounts])
                .await
                .map_err(|e| pg_err("reserve", &e))?;
            tx.commit().await.map_err(|e| pg_err("commit", &e))?;
            // BEGIN, the locks, the usage, the write and COMMIT.
            crate::metrics::db_round_trips(5);
            Ok(Ok(()))
        })
        .await
    }

    /// The JSON record of (`client`, `request_id`) that `sql` selects from `table`.
    async fn record<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        sql: &str,
        client: &str,
        request_id: &str,
    ) -> Result<Option<T>, StateError> {
        check_key(client, request_id)?;
        let rows = self
            .rows(&format!("read {table}"), sql, &[&client, &request_id])
            .await?;
        rows.first()
            .map(|r| decode(table, client, request_id, r.get(0)))
            .transpose()
    }

    /// Stores an answer; with `release`, lets go of this replica's claim of that token in
    /// the same statement.
    async fn write_answer(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
        release: Option<i64>,
    ) -> Result<(), StateError> {
        check_key(client, request_id)?;
        let record = encode("signerd_requests", rec)?;
        let signed = matches!(rec.outcome, super::StoredOutcome::Signed { .. });
        // Without a claim to let go of, the delete names no token (tokens start at 1).
        let token = release.unwrap_or(0);
        self.exec(
            "store the answer",
            "WITH released AS (
                DELETE FROM signerd_claims
                WHERE $7::bigint <> 0 AND client = $1 AND request_id = $2 AND holder = $6 AND token = $7
             )
             INSERT INTO signerd_requests (client, request_id, record, answered_at, signed)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (client, request_id)
             DO UPDATE SET record = excluded.record, answered_at = excluded.answered_at,
                 signed = excluded.signed",
            &[
                &client,
                &request_id,
                &record,
                &rec.answered_at,
                &signed,
                &self.origin,
                &token,
            ],
        )
        .await
        .map(drop)
    }

    async fn exec(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StateError> {
        self.with(async |c| {
            let st = c
                .prepare_cached(sql)
                .await
                .map_err(|e| pg_err("prepare", &e))?;
            crate::metrics::db_round_trips(1);
            c.execute(&st, params).await.map_err(|e| pg_err(what, &e))
        })
        .await
    }

    async fn rows(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        self.with(async |c| {
            let st = c
                .prepare_cached(sql)
                .await
                .map_err(|e| pg_err("prepare", &e))?;
            crate::metrics::db_round_trips(1);
            c.query(&st, params).await.map_err(|e| pg_err(what, &e))
        })
        .await
    }
}

/// The oldest time (exclusive) inside a window of `window_secs` before `now`.
fn since(now: i64, window_secs: u64) -> i64 {
    now.saturating_sub(i64::try_from(window_secs).unwrap_or(i64::MAX))
}

fn used_of(row: &tokio_postgres::Row) -> Result<Used, StateError> {
    let sum: String = row.get(0);
    let count: i64 = row.get(1);
    Ok(Used {
        amount: amount(&sum)?,
        count: u64::try_from(count).unwrap_or(0),
    })
}

/// The rustls client configuration of `tls = "verify-full"`: the server's certificate must
/// chain to `ca_file` and name the configured host.
fn client_tls(cfg: &PostgresConfig) -> Result<rustls::ClientConfig, StateError> {
    let Some(ca_file) = &cfg.ca_file else {
        return Err(StateError::Unavailable(
            "state.postgres: tls = \"verify-full\" needs ca_file".into(),
        ));
    };
    let certs = crate::tls::load_certs(ca_file)
        .map_err(|e| StateError::Unavailable(format!("state.postgres.ca_file: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            StateError::Unavailable(format!("state.postgres.ca_file {}: {e}", ca_file.display()))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StateError::Unavailable(format!("state.postgres: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Creates or migrates the schema, one replica at a time; refuses a newer one.
async fn migrate(pool: &Pool, timeout: Duration, create: bool) -> Result<(), StateError> {
    let work = async {
        let mut c = pool.get().await.map_err(|e| pool_err(&e))?;
        let tx = c.transaction().await.map_err(|e| pg_err("begin", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| pg_err("lock the schema", &e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS signerd_schema (
                one boolean PRIMARY KEY DEFAULT true CHECK (one),
                version integer NOT NULL
            )",
        )
        .await
        .map_err(|e| pg_err("create signerd_schema", &e))?;
        let found: i32 = tx
            .query_opt("SELECT version FROM signerd_schema", &[])
            .await
            .map_err(|e| pg_err("read the schema version", &e))?
            .map_or(0, |r| r.get(0));
        if found > SCHEMA_VERSION {
            return Err(StateError::Incompatible(format!(
                "the database's schema is version {found}, newer than this signerd's \
                 ({SCHEMA_VERSION}): another replica runs a newer release; upgrade this one"
            )));
        }
        if !create && found != SCHEMA_VERSION {
            return Err(StateError::Incompatible(format!(
                "the database's schema is version {found}, this signerd's is {SCHEMA_VERSION}"
            )));
        }
        let from = usize::try_from(found).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| pg_err(&format!("migrate the schema to version {}", i + 1), &e))?;
        }
        if found < SCHEMA_VERSION {
            tx.execute(
                "INSERT INTO signerd_schema (one, version) VALUES (true, $1)
                 ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(|e| pg_err("record the schema version", &e))?;
            tracing::info!(
                from = found,
                to = SCHEMA_VERSION,
                "database schema migrated"
            );
        }
        tx.commit().await.map_err(|e| pg_err("commit", &e))
    };
    // Migrations may wait for another replica's; allow them more than one call's time.
    tokio::time::timeout(timeout * 6, work)
        .await
        .map_err(|_| StateError::Unavailable("PostgreSQL: no answer while migrating".into()))?
}

/// Keeps this replica's claims from lapsing while it lives.
async fn renew(pool: Pool, origin: String, timeout: Duration) {
    let mut tick = tokio::time::interval(CLAIM_LEASE / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let work = async {
            let c = pool.get().await.map_err(|e| pool_err(&e))?;
            c.execute(
                "UPDATE signerd_claims SET expires = now() + make_interval(secs => $2)
                 WHERE holder = $1",
                &[&origin, &CLAIM_LEASE.as_secs_f64()],
            )
            .await
            .map_err(|e| pg_err("renew claims", &e))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew this replica's claims"),
            Err(_) => tracing::warn!("cannot renew this replica's claims: no answer in time"),
        }
    }
}

#[async_trait::async_trait]
impl StateStore for PostgresStore {
    async fn get_request(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>, StateError> {
        self.record(
            "signerd_requests",
            "SELECT record FROM signerd_requests WHERE client = $1 AND request_id = $2",
            client,
            request_id,
        )
        .await
    }

    async fn put_request(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
    ) -> Result<(), StateError> {
        self.write_answer(client, request_id, rec, None).await
    }

    async fn expired(&self, client: &str, request_id: &str) -> Result<Option<i64>, StateError> {
        check_key(client, request_id)?;
        let rows = self
            .rows(
                "read the expiry marker",
                "SELECT answered_at FROM signerd_expired WHERE client = $1 AND request_id = $2",
                &[&client, &request_id],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn put_expired(
        &self,
        client: &str,
        request_id: &str,
        answered_at: i64,
    ) -> Result<(), StateError> {
        check_key(client, request_id)?;
        self.exec(
            "store the expiry marker",
            "WITH gone AS (
                DELETE FROM signerd_requests WHERE client = $1 AND request_id = $2
             )
             INSERT INTO signerd_expired (client, request_id, answered_at) VALUES ($1, $2, $3)
             ON CONFLICT (client, request_id) DO UPDATE SET answered_at = excluded.answered_at",
            &[&client, &request_id, &answered_at],
        )
        .await
        .map(drop)
    }

    async fn prune_answers(&self, cutoff: i64, now: i64, max: usize) -> Result<Pruned, StateError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "read answers due",
                "SELECT r.client, r.request_id, r.record, r.answered_at, p.record
                 FROM signerd_requests r
                 LEFT JOIN signerd_pending p USING (client, request_id)
                 WHERE r.answered_at < $1
                 ORDER BY r.answered_at LIMIT $2",
                &[&cutoff, &limit],
            )
            .await?;
        let mut done = Pruned {
            examined: rows.len(),
            expired: 0,
            more: rows.len() == max,
        };
        for row in &rows {
            let client: &str = row.get(0);
            let request_id: &str = row.get(1);
            let indexed_at: i64 = row.get(3);
            let mut rec: StoredRequest =
                decode("signerd_requests", client, request_id, row.get(2))?;
            let pending: Option<PendingRecord> = row
                .get::<_, Option<&str>>(4)
                .map(|t| decode("signerd_pending", client, request_id, t))
                .transpose()?;
            // Every change is conditional on the row being as read: a request answered
            // again meanwhile keeps its new answer.
            match verdict(indexed_at, Some(&rec), pending.as_ref(), cutoff, now) {
                Verdict::Drop => {
                    self.exec(
                        "re-index the answer",
                        "UPDATE signerd_requests SET answered_at = $4
                         WHERE client = $1 AND request_id = $2 AND answered_at = $3",
                        &[&client, &request_id, &indexed_at, &rec.answered_at],
                    )
                    .await?;
                }
                Verdict::Keep(at) => {
                    rec.answered_at = Some(at);
                    let record = encode("signerd_requests", &rec)?;
                    self.exec(
                        "re-index the answer",
                        "UPDATE signerd_requests SET answered_at = $4, record = $5
                         WHERE client = $1 AND request_id = $2 AND answered_at = $3",
                        &[&client, &request_id, &indexed_at, &at, &record],
                    )
                    .await?;
                }
                Verdict::Expire(at) => {
                    let n = self
                        .exec(
                            "expire the answer",
                            "WITH gone AS (
                                DELETE FROM signerd_requests
                                WHERE client = $1 AND request_id = $2 AND answered_at = $3
                                RETURNING 1
                             ), approval AS (
                                DELETE FROM signerd_pending
                                WHERE client = $1 AND request_id = $2
                                  AND EXISTS (SELECT 1 FROM gone)
                             )
                             INSERT INTO signerd_expired (client, request_id, answered_at)
                             SELECT $1, $2, $4 WHERE EXISTS (SELECT 1 FROM gone)
                             ON CONFLICT (client, request_id)
                             DO UPDATE SET answered_at = excluded.answered_at",
                            &[&client, &request_id, &indexed_at, &at],
                        )
                        .await?;
                    done.expired += usize::try_from(n).unwrap_or(0);
                }
            }
        }
        Ok(done)
    }

    async fn flush(&self) -> Result<(), StateError> {
        // Every write was committed before it returned.
        Ok(())
    }

    async fn probe(&self) -> Result<(), StateError> {
        self.exec(
            "probe",
            "INSERT INTO signerd_probe (origin, at) VALUES ($1, now())
             ON CONFLICT (origin) DO UPDATE SET at = now()",
            &[&self.origin],
        )
        .await
        .map(drop)
    }

    async fn reserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        // A request holds reservations of its own only when another replica took it and
        // stopped: they are the same request's, so they are replaced, never added to.
        self.replace_reservations(client, request_id, now, charges)
            .await
    }

    async fn release(&self, client: &str, request_id: &str) -> Result<(), StateError> {
        check_key(client, request_id)?;
        self.exec(
            "release the reservations",
            "DELETE FROM signerd_spend WHERE client = $1 AND request_id = $2",
            &[&client, &request_id],
        )
        .await
        .map(drop)
    }

    /// The database, not a replica's log, is the durable copy of every replica's
    /// reservations, so nothing is replaced:
    /// - the spend of this log's signed requests that the database lacks is added (a store
    ///   moved from the embedded one, or an answer restored from the log): only for requests
    ///   whose committed answer is a signature (or expired), and that hold no reservation;
    /// - this replica's claims from before its start are let go, and the reservations of
    ///   those requests released when they ended with no answer and no approval record (the
    ///   replica stopped before their result was durable; the answers its log holds were
    ///   restored before this).
    async fn reconcile(&self, spend: Spend) -> Result<(), StateError> {
        // The signed charges before a snapshot are in the database already: the snapshot is
        // used only up to where the store holds every answer, and a signed answer's
        // reservation was written before it was signed.
        let entries: Vec<Entry> = spend.signed.into_iter().chain(spend.waiting).collect();
        let mut clients = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut buckets = Vec::with_capacity(entries.len());
        let mut times = Vec::with_capacity(entries.len());
        let mut amounts = Vec::with_capacity(entries.len());
        for e in &entries {
            let Some((client, request_id)) = e.owner.split_once('\0') else {
                return Err(StateError::Corrupt(format!(
                    "spend entry of the log: owner {:?} is not client and request id",
                    e.owner
                )));
            };
            check_key(client, request_id)?;
            clients.push(client);
            ids.push(request_id);
            buckets.push(e.bucket.as_str());
            times.push(e.ts);
            amounts.push(e.amount.to_string());
        }
        // Large logs: one statement per batch, each within the call timeout.
        for start in (0..entries.len()).step_by(10_000) {
            let end = (start + 10_000).min(entries.len());
            self.exec(
                "add the log's signed spend",
                "INSERT INTO signerd_spend (client, request_id, bucket, ts, amount)
                 SELECT e.c, e.r, e.b, e.t, e.a::numeric
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                     AS e(c, r, b, t, a)
                 WHERE (EXISTS (SELECT 1 FROM signerd_requests q
                                WHERE q.client = e.c AND q.request_id = e.r AND q.signed)
                        OR EXISTS (SELECT 1 FROM signerd_expired x
                                   WHERE x.client = e.c AND x.request_id = e.r))
                   AND NOT EXISTS (SELECT 1 FROM signerd_spend s
                                   WHERE s.client = e.c AND s.request_id = e.r)",
                &[
                    &&clients[start..end],
                    &&ids[start..end],
                    &&buckets[start..end],
                    &&times[start..end],
                    &&amounts[start..end],
                ],
            )
            .await?;
        }
        self.exec(
            "let go of this replica's earlier claims",
            "WITH mine AS (
                DELETE FROM signerd_claims WHERE holder = $1 RETURNING client, request_id
             )
             DELETE FROM signerd_spend s USING mine m
             WHERE s.client = m.client AND s.request_id = m.request_id
               AND NOT EXISTS (SELECT 1 FROM signerd_requests r
                               WHERE r.client = m.client AND r.request_id = m.request_id)
               AND NOT EXISTS (SELECT 1 FROM signerd_pending p
                               WHERE p.client = m.client AND p.request_id = m.request_id)",
            &[&self.origin],
        )
        .await
        .map(drop)
    }

    async fn usage(
        &self,
        queries: &[UsageQuery],
        now: i64,
        excluding: Option<(&str, &str)>,
    ) -> Result<Vec<Used>, StateError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let (client, request_id) = excluding.unwrap_or(("", ""));
        let names: Vec<&str> = queries.iter().map(|q| q.bucket.as_str()).collect();
        let since: Vec<i64> = queries.iter().map(|q| since(now, q.window_secs)).collect();
        let rows = self
            .rows(
                "read the limits",
                USAGE_SQL,
                &[&names, &since, &client, &request_id],
            )
            .await?;
        if rows.len() != queries.len() {
            return Err(StateError::Corrupt(format!(
                "signerd_spend: {} usages for {} queries",
                rows.len(),
                queries.len()
            )));
        }
        rows.iter().map(used_of).collect()
    }

    async fn rereserve(
        &self,
        client: &str,
        request_id: &str,
        now: i64,
        charges: &[Charge],
    ) -> Result<Result<(), Exceeded>, StateError> {
        self.replace_reservations(client, request_id, now, charges)
            .await
    }

    async fn get_pending(
        &self,
        client: &str,
        request_id: &str,
    ) -> Result<Option<PendingRecord>, StateError> {
        self.record(
            "signerd_pending",
            "SELECT record FROM signerd_pending WHERE client = $1 AND request_id = $2",
            client,
            request_id,
        )
        .await
    }

    async fn put_pending(&self, rec: &PendingRecord) -> Result<(), StateError> {
        check_key(&rec.client, &rec.request_id)?;
        let record = encode("signerd_pending", rec)?;
        let open = !rec.status.is_final();
        self.exec(
            "store the approval record",
            "INSERT INTO signerd_pending (client, request_id, record, open) VALUES ($1, $2, $3, $4)
             ON CONFLICT (client, request_id)
             DO UPDATE SET record = excluded.record, open = excluded.open",
            &[&rec.client, &rec.request_id, &record, &open],
        )
        .await
        .map(drop)
    }

    async fn open_pending(&self) -> Result<Vec<PendingRecord>, StateError> {
        let rows = self
            .rows(
                "read open approval records",
                "SELECT client, request_id, record FROM signerd_pending WHERE open
                 ORDER BY client, request_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| decode("signerd_pending", r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    async fn log_binding(&self) -> Result<Option<LogBinding>, StateError> {
        let rows = self
            .rows(
                "read the log binding",
                "SELECT binding FROM signerd_log_bindings WHERE origin = $1",
                &[&self.origin],
            )
            .await?;
        rows.first()
            .map(|r| decode("signerd_log_bindings", &self.origin, "", r.get(0)))
            .transpose()
    }

    async fn bind_log(&self, binding: &LogBinding) -> Result<(), StateError> {
        let text = encode("signerd_log_bindings", binding)?;
        self.exec(
            "bind the log",
            "INSERT INTO signerd_log_bindings (origin, binding) VALUES ($1, $2)
             ON CONFLICT (origin) DO UPDATE SET binding = excluded.binding",
            &[&binding.origin, &text],
        )
        .await
        .map(drop)
    }

    async fn claim(&self, client: &str, request_id: &str) -> Result<Claim, StateError> {
        check_key(client, request_id)?;
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let rows = self
            .rows(
                "claim the request",
                "WITH prev AS (
                    SELECT holder FROM signerd_claims WHERE client = $1 AND request_id = $2
                 ), taken AS (
                    INSERT INTO signerd_claims (client, request_id, holder, token, expires)
                    VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
                    ON CONFLICT (client, request_id) DO UPDATE
                    SET holder = excluded.holder, token = excluded.token, expires = excluded.expires
                    WHERE signerd_claims.expires < now() OR signerd_claims.holder = excluded.holder
                    RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM taken), (SELECT holder FROM prev)",
                &[
                    &client,
                    &request_id,
                    &self.origin,
                    &token,
                    &CLAIM_LEASE.as_secs_f64(),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StateError::Unavailable("PostgreSQL: claim: no row".into()))?;
        let taken: i64 = row.get(0);
        let before: Option<String> = row.get(1);
        Ok(match (taken, before) {
            (1, before) => Claim::Held {
                token,
                taken_over: before.filter(|h| *h != self.origin),
            },
            (_, holder) => Claim::Busy {
                holder: holder.unwrap_or_default(),
            },
        })
    }

    async fn lookup(&self, client: &str, request_id: &str) -> Result<Lookup, StateError> {
        check_key(client, request_id)?;
        let rows = self
            .rows(
                "read the answer",
                "SELECT
                    (SELECT record FROM signerd_requests WHERE client = $1 AND request_id = $2),
                    (SELECT answered_at FROM signerd_expired WHERE client = $1 AND request_id = $2)",
                &[&client, &request_id],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StateError::Unavailable("PostgreSQL: lookup: no row".into()))?;
        let record: Option<&str> = row.get(0);
        let expired: Option<i64> = row.get(1);
        Ok(match (record, expired) {
            (Some(text), _) => {
                Lookup::Answer(decode("signerd_requests", client, request_id, text)?)
            }
            (None, Some(at)) => Lookup::Expired(at),
            (None, None) => Lookup::New,
        })
    }

    async fn put_request_releasing(
        &self,
        client: &str,
        request_id: &str,
        rec: &StoredRequest,
        token: i64,
    ) -> Result<(), StateError> {
        self.write_answer(client, request_id, rec, Some(token))
            .await
    }

    async fn unclaim(&self, client: &str, request_id: &str, token: i64) -> Result<(), StateError> {
        check_key(client, request_id)?;
        self.exec(
            "let go of the claim",
            "DELETE FROM signerd_claims
             WHERE client = $1 AND request_id = $2 AND holder = $3 AND token = $4",
            &[&client, &request_id, &self.origin, &token],
        )
        .await
        .map(drop)
    }

    fn shared(&self) -> bool {
        true
    }
}
