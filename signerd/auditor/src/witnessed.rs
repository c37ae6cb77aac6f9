//! `verify --witness VKEY ... --min-witnesses K`: the log checked against the checkpoints that
//! independent witnesses cosigned (`docs/audit-log.md`, "Witnesses").
//!
//! signerd keeps, in `DIR/cosignatures/<name>`, the latest checkpoint each witness cosigned
//! (the checkpoint note followed by the witness's cosignature lines). This module reads those
//! files, keeps for each trusted witness key the largest checkpoint it validly cosigned, and
//! hands each one to the verifier as a checkpoint kept elsewhere: the log must hold at least
//! that many records, and its first records must hash to that root. It then requires that at
//! least K of the trusted witnesses cosigned a checkpoint of this log.
//!
//! This module only reads. It must never count a cosignature it has not verified, count a
//! witness twice, or accept a cosigned checkpoint that the log does not contain.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::json;

use crate::check::Failure;
use crate::commands::{self, CommandError};
use crate::cosignature::{self, CosignerKey};
use crate::note::{self, NoteError, VerifierKey};
use crate::segments;
use crate::verify::{self, VerifyOptions};

/// The directory, inside a log directory, of the checkpoints witnesses cosigned.
pub const COSIGNATURES_DIR: &str = "cosignatures";
/// Most files read from it.
pub const MAX_FILES: usize = 1024;

/// The largest checkpoint one witness cosigned, as found in the log directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Witnessed {
    /// The witness's key (vkey form).
    pub witness: String,
    /// The file it was read from, relative to the log directory.
    pub file: String,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's root (hex).
    pub root: String,
    /// When the witness cosigned it (POSIX seconds).
    pub timestamp: u64,
    /// The cosigned note.
    #[serde(skip)]
    pub note: String,
}

/// The files of `DIR/cosignatures/` (name, text), in name order: at most [`MAX_FILES`], each at
/// most a note's size; temporary files are skipped.
pub fn cosignature_files(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let path = dir.join(COSIGNATURES_DIR);
    let entries = match std::fs::read_dir(&path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", path.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        names.push(name);
        if names.len() > MAX_FILES {
            return Err(format!(
                "{} holds more than {MAX_FILES} files",
                path.display()
            ));
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let mut text = String::new();
        segments::open_regular(&path.join(&name))
            .and_then(|f| {
                f.take(note::MAX_NOTE_BYTES as u64 + 1)
                    .read_to_string(&mut text)
            })
            .map_err(|e| format!("cannot read {COSIGNATURES_DIR}/{name}: {e}"))?;
        out.push((name, text));
    }
    Ok(out)
}

/// Reads `DIR/cosignatures/` and returns, for each key in `witnesses` that cosigned a
/// checkpoint there, the largest one (in the order of `witnesses`). A file with a cosignature
/// line by a trusted key that does not verify, or (with `log_key`) a cosigned note the log's
/// key did not sign, is an error: it was forged or damaged.
pub fn read_cosigned(
    dir: &Path,
    witnesses: &[CosignerKey],
    log_key: Option<&VerifierKey>,
) -> Result<Vec<Witnessed>, String> {
    let mut best: Vec<Option<Witnessed>> = vec![None; witnesses.len()];
    for (name, text) in cosignature_files(dir)? {
        let shown = format!("{COSIGNATURES_DIR}/{name}");
        for (i, key) in witnesses.iter().enumerate() {
            let cosigned = match cosignature::verify_cosignature(&text, key) {
                Ok(c) => c,
                Err(NoteError::Unsigned(_)) => continue,
                Err(e) => return Err(format!("{shown}: {e}: the file was forged or damaged")),
            };
            if let Some(log_key) = log_key {
                note::verify_note(&text, log_key).map_err(|e| {
                    format!(
                        "{shown}: the checkpoint witness {} cosigned: {e}",
                        key.name()
                    )
                })?;
            }
            let candidate = Witnessed {
                witness: key.to_string(),
                file: shown.clone(),
                size: cosigned.checkpoint.size,
                root: hex::encode(cosigned.checkpoint.root),
                timestamp: cosigned.timestamp,
                note: text.clone(),
            };
            let slot = &mut best[i];
            if slot.as_ref().is_none_or(|b| b.size < candidate.size) {
                *slot = Some(candidate);
            }
        }
    }
    Ok(best.into_iter().flatten().collect())
}

/// Parses `--witness` values (witness keys in vkey form).
pub fn parse_keys(keys: &[String]) -> Result<Vec<CosignerKey>, CommandError> {
    keys.iter()
        .map(|k| {
            CosignerKey::parse(k).map_err(|e| CommandError::Input(format!("--witness {k}: {e}")))
        })
        .collect()
}

/// The size that at least `min` of the witnesses vouch for: the `min`-th largest of their
/// cosigned sizes (a witness that cosigned a size has checked every smaller one it saw).
pub fn witnessed_size(found: &[Witnessed], min: usize) -> Option<u64> {
    let mut sizes: Vec<u64> = found.iter().map(|w| w.size).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    match min {
        0 => Some(sizes.first().copied().unwrap_or(0)),
        k => sizes.get(k - 1).copied(),
    }
}

/// `verify DIR ... --witness VKEY ... --min-witnesses K`: the whole verification procedure,
/// with every witness-cosigned checkpoint as a checkpoint the log must contain, then at least
/// `min` of `witnesses` must have cosigned one.
#[allow(clippy::too_many_arguments)] // the options of one command line
pub fn verify(
    dir: &Path,
    key: Option<VerifierKey>,
    checkpoints: &[std::path::PathBuf],
    flags: &commands::VerifyFlags,
    witnesses: &[CosignerKey],
    min: usize,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let fail = |out: &mut dyn Write, f: Failure| -> Result<(), CommandError> {
        if json_out {
            writeln!(
                out,
                "{}",
                json!({"ok": false, "failure": {
                    "location": f.location, "seq": f.seq, "message": f.message}})
            )?;
        }
        Err(CommandError::Verification(f))
    };
    if min > witnesses.len() {
        return Err(CommandError::Input(format!(
            "--min-witnesses {min} needs at least {min} --witness keys (got {})",
            witnesses.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for w in witnesses {
        if !seen.insert((w.name().to_owned(), w.id())) {
            return Err(CommandError::Input(format!(
                "--witness {w} is given twice; each witness counts once"
            )));
        }
    }
    let found = match read_cosigned(dir, witnesses, key.as_ref()) {
        Ok(f) => f,
        Err(e) => return fail(out, Failure::general(e)),
    };
    let mut opts = VerifyOptions {
        key,
        ..VerifyOptions::default()
    };
    commands::apply_flags(&mut opts, flags)?;
    for f in checkpoints {
        opts.checkpoints.push((
            format!("checkpoint {}", f.display()),
            commands::read_input(f)?,
        ));
    }
    for w in &found {
        opts.checkpoints.push((
            format!("the checkpoint witness {} cosigned ({})", w.witness, w.file),
            w.note.clone(),
        ));
    }
    let report = match verify::verify_dir(dir, &opts) {
        Ok(r) => r,
        Err(f) => return fail(out, f),
    };
    let Some(size) = witnessed_size(&found, min) else {
        return fail(
            out,
            Failure::general(format!(
                "{} of the {} witnesses given cosigned a checkpoint of this log, and \
                 --min-witnesses is {min}: the log was not shown to them, its cosignatures \
                 were removed, or it was replaced",
                found.len(),
                witnesses.len()
            )),
        );
    };
    let records = report.last_seq.map_or(0, |s| s + 1);
    if json_out {
        let mut v =
            serde_json::to_value(&report).map_err(|e| CommandError::Input(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".to_owned(), json!(true));
            o.insert("witnesses".to_owned(), json!(found));
            o.insert("witnessed_size".to_owned(), json!(size));
        }
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let mut text = commands::render(&report);
    // The witnesses' lines go before the final `OK`.
    if text.ends_with("OK\n") {
        text.truncate(text.len() - 3);
    }
    out.write_all(text.as_bytes())?;
    for w in &found {
        writeln!(
            out,
            "witness:      {} cosigned {} records (root {}) at {}",
            w.witness, w.size, w.root, w.timestamp
        )?;
    }
    writeln!(
        out,
        "witnessed:    {size} of {records} records cosigned by at least {min} of {} witnesses; {} record(s) after it",
        witnesses.len(),
        records.saturating_sub(size)
    )?;
    writeln!(out, "OK")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn w(size: u64) -> Witnessed {
        Witnessed {
            witness: String::new(),
            file: String::new(),
            size,
            root: String::new(),
            timestamp: 0,
            note: String::new(),
        }
    }

    #[test]
    fn the_witnessed_size_is_the_kth_largest() {
        let found = [w(10), w(30), w(20)];
        assert_eq!(witnessed_size(&found, 1), Some(30));
        assert_eq!(witnessed_size(&found, 2), Some(20));
        assert_eq!(witnessed_size(&found, 3), Some(10));
        assert_eq!(witnessed_size(&found, 4), None);
        assert_eq!(witnessed_size(&[], 0), Some(0));
        assert_eq!(witnessed_size(&[], 1), None);
    }
}
