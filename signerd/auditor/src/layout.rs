//! The files of a log directory besides its segments: the `checkpoint` file, the bytes
//! crash recovery cut, kept in `recovered/`, and snapshots of derived state in `snapshots/`
//! (`docs/audit-log.md`, "Files").
//!
//! This module only reads. It must never follow a symbolic link to a file it reads, or read
//! more of a file than the format allows (a note, a torn tail).

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use crate::note::{self, Checkpoint, VerifierKey};
use crate::segments;

/// Name of the file holding the latest checkpoint, in the log directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// Directory (inside the log directory) where crash recovery keeps the bytes it cut.
pub const RECOVERED_DIR: &str = "recovered";

/// Directory (inside the log directory) holding snapshots of the state derived from the log.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Largest snapshot file start-up or an auditor reads; a bigger one is refused unread.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// The snapshot file of the first `records` records, relative to the log directory:
/// `snapshots/snapshot-<records>.json`, `records` in 20 digits (so that names sort by it).
pub fn snapshot_file(records: u64) -> String {
    format!("{SNAPSHOTS_DIR}/snapshot-{records:020}.json")
}

/// The number of records a snapshot file name (without directory) says it covers.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Largest torn tail crash recovery cuts (a batch of maximal records); anything bigger is not
/// a torn write.
pub const MAX_TORN_BYTES: u64 = 64 << 20;

/// Reads `DIR/checkpoint` if present and, with `key`, checks its signature. Returns the note
/// text and its checkpoint; `None` when there is no such file.
pub fn read_checkpoint_file(
    dir: &Path,
    key: Option<&VerifierKey>,
) -> Result<Option<(String, Checkpoint)>, String> {
    let path = dir.join(CHECKPOINT_FILE);
    let file = match segments::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(note::MAX_NOTE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let checkpoint = match key {
        Some(key) => note::verify_note(&text, key).map_err(|e| {
            format!(
                "{}: {e}: the file was replaced, or the audit key or audit.origin changed (verifier key {key})",
                path.display()
            )
        })?,
        None => {
            note::parse_note(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .0
        }
    };
    Ok(Some((text, checkpoint)))
}

/// The checkpoints of this log that witnesses cosigned, as kept in `DIR/cosignatures/`
/// (`(file name, checkpoint)`): each note must be signed by `key`, the log's own key (the
/// witnesses' cosignature lines are not checked here). Start-up refuses a log shorter than any
/// of them, as it does for the `checkpoint` file.
pub fn read_cosigned_checkpoints(
    dir: &Path,
    key: &VerifierKey,
) -> Result<Vec<(String, Checkpoint)>, String> {
    crate::witnessed::cosignature_files(dir)?
        .into_iter()
        .map(|(name, text)| {
            let checkpoint = note::verify_note(&text, key).map_err(|e| {
                format!(
                    "{}/{name}: {e}: the file was replaced, or the audit key or audit.origin changed",
                    dir.join(crate::witnessed::COSIGNATURES_DIR).display()
                )
            })?;
            Ok((name, checkpoint))
        })
        .collect()
}

/// The bytes of `path` from `offset` on, at most one more than a torn tail may have (so that
/// a caller can tell a torn tail from something larger).
pub fn read_tail(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    f.take(MAX_TORN_BYTES + 1).read_to_end(&mut out)?;
    Ok(out)
}
