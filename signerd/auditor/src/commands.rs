//! The read-only commands an auditor runs on a log directory, with their output: `verify`,
//! `prove`, `check-proof`, `query` and `tail`. The `signerd-auditor` binary and `signerctl
//! audit` parse their own arguments and call these, so both print the same thing.
//!
//! Output goes to the writer given; a failure is returned, never printed, so each binary
//! reports it its own way. Nothing here writes to the log directory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::check::Failure;
use crate::note::VerifierKey;
use crate::prove::{self, InclusionProof};
use crate::query::{self, Filter, Follower};
use crate::verify::{self, Report, VerifyOptions};

/// Largest proof or checkpoint file read (and what is read from stdin).
const MAX_INPUT_BYTES: u64 = 16 << 20;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The log does not verify: the first failure, with where it is.
    #[error("audit log verification FAILED: {0}")]
    Verification(Failure),
    /// An input (the log, a file, an argument) is missing, unreadable or invalid.
    #[error("{0}")]
    Input(String),
    /// The output cannot be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<String> for CommandError {
    fn from(message: String) -> CommandError {
        CommandError::Input(message)
    }
}

/// How `query` prints records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The exact lines (JSON Lines).
    Json,
    /// One summary line per record, under a header.
    Table,
}

/// The verifier key given as text (`--pubkey`) or in a file (`--pubkey-file`); `None` if
/// neither is.
pub fn verifier_key(
    text: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<VerifierKey>, CommandError> {
    let text = match (text, file) {
        (Some(k), _) => k.to_owned(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CommandError::Input(format!("reading {}: {e}", f.display())))?,
        (None, None) => return Ok(None),
    };
    VerifierKey::parse(&text)
        .map(Some)
        .map_err(|e| CommandError::Input(e.to_string()))
}

/// The text of `file`, or of stdin for `-`; at most 16 MiB.
pub fn read_input(file: &Path) -> Result<String, CommandError> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| CommandError::Input(format!("reading stdin: {e}")))?;
        return Ok(text);
    }
    let shown = |e: std::io::Error| CommandError::Input(format!("{}: {e}", file.display()));
    let meta = std::fs::metadata(file).map_err(shown)?;
    if meta.len() > MAX_INPUT_BYTES {
        return Err(CommandError::Input(format!(
            "{}: larger than 16 MiB",
            file.display()
        )));
    }
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_INPUT_BYTES).read_to_string(&mut text))
        .map_err(shown)?;
    Ok(text)
}

/// How `verify` reads the log, besides its key and the checkpoints kept elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyFlags {
    /// `--live`: the log is being written; records after the last checkpoint are reported,
    /// not a failure.
    pub live: bool,
    /// `--since FILE`: a checkpoint verified before; only what was appended since is checked
    /// in full.
    pub since: Option<PathBuf>,
}

/// Sets `--live` and `--since` in `opts`.
pub fn apply_flags(opts: &mut VerifyOptions, flags: &VerifyFlags) -> Result<(), CommandError> {
    opts.live = flags.live;
    if let Some(f) = &flags.since {
        opts.since = Some((
            format!("the --since checkpoint {}", f.display()),
            read_input(f)?,
        ));
    }
    Ok(())
}

/// `verify DIR`: the whole verification procedure, with checkpoints kept elsewhere.
pub fn verify(
    dir: &Path,
    key: Option<VerifierKey>,
    checkpoints: &[PathBuf],
    flags: &VerifyFlags,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut opts = VerifyOptions {
        key,
        checkpoints: Vec::new(),
        live: flags.live,
        since: None,
    };
    if let Some(f) = &flags.since {
        opts.since = Some((
            format!("the --since checkpoint {}", f.display()),
            read_input(f)?,
        ));
    }
    for f in checkpoints {
        opts.checkpoints
            .push((format!("checkpoint {}", f.display()), read_input(f)?));
    }
    match verify::verify_dir(dir, &opts) {
        Ok(report) => {
            if json_out {
                let mut v = serde_json::to_value(&report)
                    .map_err(|e| CommandError::Input(e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("ok".to_owned(), json!(true));
                }
                writeln!(out, "{v}")?;
            } else {
                out.write_all(render(&report).as_bytes())?;
            }
            Ok(())
        }
        Err(f) => {
            if json_out {
                writeln!(
                    out,
                    "{}",
                    json!({"ok": false, "failure": {
                        "location": f.location, "seq": f.seq, "message": f.message}})
                )?;
            }
            Err(CommandError::Verification(f))
        }
    }
}

/// The verification report as text, one aspect per line, ending with `OK`.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let s = &r.stats;
    line(format!(
        "records:      {} (seq 0 to {}) in {} segment(s): {} .. {}",
        s.records,
        r.last_seq.map_or("-".to_owned(), |x| x.to_string()),
        r.segments.len(),
        r.segments.first().map_or("-", String::as_str),
        r.segments.last().map_or("-", String::as_str)
    ));
    line("hash chain:   OK (envelopes, seq without gaps, prev chain, segment chaining)".to_owned());
    if r.verified_from > 0 {
        line(format!(
            "since:        the log is consistent with the --since checkpoint ({} records); records from seq {} on were checked in full",
            r.verified_from, r.verified_from
        ));
    }
    line(match &r.last_checkpoint {
        Some(c) => format!(
            "checkpoints:  {} OK, origin {}; the last covers {} records, root {}",
            s.checkpoints,
            r.origin.as_deref().unwrap_or("-"),
            c.seq,
            c.root
        ),
        None => "checkpoints:  none in the log".to_owned(),
    });
    line(match &r.signatures_checked_with {
        Some(k) if r.verified_from > 0 => format!(
            "signatures:   every checkpoint signature from seq {} on verified with {k}",
            r.verified_from
        ),
        Some(k) => format!("signatures:   every checkpoint signature verified with {k}"),
        None => "signatures:   NOT checked (give --pubkey with the verifier key from `signerctl audit pubkey`)".to_owned(),
    });
    line(format!(
        "checkpoint file: {}; external checkpoints matched: {}",
        if r.checkpoint_file {
            "present and consistent with the log"
        } else {
            "absent"
        },
        r.external_checkpoints
    ));
    let results: Vec<String> = s.results.iter().map(|(k, v)| format!("{k} {v}")).collect();
    line(format!(
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
    ));
    line(format!(
        "restarts:     {} start(s), {} crash recovery record(s)",
        s.starts, s.recoveries
    ));
    line(if r.unattested == 0 {
        "unattested:   none (every record is covered by the last checkpoint, except that checkpoint record itself)".to_owned()
    } else {
        format!(
            "unattested:   {} record(s) after the last checkpoint record, not yet covered by a signed tree head (--live: the log is being written)",
            r.unattested
        )
    });
    for p in &r.pending {
        line(format!(
            "pending:      request {} allowed at seq {} has no result yet (in flight, or recorded as unknown_crash at the next start)",
            p.req_id.as_deref().unwrap_or("null"),
            p.decision_seq
        ));
    }
    for w in &r.warnings {
        line(format!("warning:      {w}"));
    }
    line("OK".to_owned());
    out
}

/// `prove --dir DIR SEQ`: the inclusion proof of record `seq` against the latest checkpoint,
/// as pretty JSON; with a key, the checkpoint must be signed by it.
pub fn prove(
    dir: &Path,
    seq: u64,
    key: Option<&VerifierKey>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let proof = prove::prove(dir, seq)?;
    if let Some(k) = key {
        prove::check(&proof, Some(k))?;
    }
    let text =
        serde_json::to_string_pretty(&proof).map_err(|e| CommandError::Input(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// `check-proof FILE`: checks a proof printed by `prove` (`-`: stdin); with `leaf_hash` (hex,
/// `0x` allowed), the proof must be for that leaf.
pub fn check_proof(
    file: &Path,
    key: Option<&VerifierKey>,
    leaf_hash: Option<&str>,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let proof: InclusionProof = serde_json::from_str(&read_input(file)?)
        .map_err(|e| CommandError::Input(format!("parsing the proof: {e}")))?;
    if let Some(want) = leaf_hash {
        let want = want.trim_start_matches("0x").to_ascii_lowercase();
        if want != proof.leaf_hash {
            return Err(CommandError::Input(format!(
                "the proof is for leaf hash {}, not {want}",
                proof.leaf_hash
            )));
        }
    }
    let cp = prove::check(&proof, key)?;
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"ok": true, "seq": proof.seq, "tree_size": cp.size,
                   "origin": cp.origin, "signature_checked": key.is_some()})
        )?;
    } else {
        let signed = match key {
            Some(k) => format!("signed by {k}"),
            None => "signature NOT checked (give --pubkey)".to_owned(),
        };
        writeln!(
            out,
            "OK: record {} (leaf {}) is in the tree of {} records of {}; checkpoint {signed}",
            proof.seq, proof.leaf_hash, cp.size, cp.origin
        )?;
    }
    Ok(())
}

/// `consistency --dir DIR OLD [NEW]`: the consistency proof from the checkpoint in file `old`
/// to the one in `new` (default: the log's latest), as pretty JSON; with a key, both must be
/// signed by it.
pub fn consistency(
    dir: &Path,
    old: &Path,
    new: Option<&Path>,
    key: Option<&VerifierKey>,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let old = read_input(old)?;
    let new = new.map(read_input).transpose()?;
    let proof = prove::prove_consistency(dir, &old, new.as_deref())?;
    if let Some(k) = key {
        prove::check_consistency(&proof, Some(k))?;
    }
    let text =
        serde_json::to_string_pretty(&proof).map_err(|e| CommandError::Input(e.to_string()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// `check-consistency FILE`: checks a proof printed by `consistency` (`-`: stdin).
pub fn check_consistency(
    file: &Path,
    key: Option<&VerifierKey>,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let proof: prove::ConsistencyProof = serde_json::from_str(&read_input(file)?)
        .map_err(|e| CommandError::Input(format!("parsing the proof: {e}")))?;
    let (old, new) = prove::check_consistency(&proof, key)?;
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"ok": true, "origin": new.origin, "old_size": old.size,
                   "new_size": new.size, "signature_checked": key.is_some()})
        )?;
    } else {
        let signed = match key {
            Some(k) => format!("both signed by {k}"),
            None => "signatures NOT checked (give --pubkey)".to_owned(),
        };
        writeln!(
            out,
            "OK: the tree of {} records of {} extends the tree of {} records; {signed}",
            new.size, new.origin, old.size
        )?;
    }
    Ok(())
}

/// `query --dir DIR`: the records matching `filter`, as exact lines or as a table.
pub fn query(
    dir: &Path,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    if format == Format::Table {
        writeln!(
            out,
            "{:>8}  {:<27}  {:<18}  {:<20}  {:<12}  {:<16}  summary",
            "seq", "ts", "type", "req_id", "client", "key"
        )?;
    }
    let mut written = Ok(());
    let queried = query::query(dir, filter, |row| {
        let w = match format {
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
        w.map_err(|e| {
            let message = e.to_string();
            written = Err(e);
            message
        })
    });
    written?;
    queried?;
    out.flush()?;
    Ok(())
}

/// `tail --dir DIR -n N [-f]`: the last `lines` records; with `follow`, then every new one as
/// it is written (across segment rotation), until the process is stopped.
pub fn tail(
    dir: &Path,
    lines: usize,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let (last, mut follower) = Follower::start(dir, lines)?;
    for l in last {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for l in follower.poll()? {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
    }
}
