//! Key files on this host's disk, for every backend that keeps some (the soft keystore,
//! Vault-wrapped keys, imports): read with a size bound, directories created private, new
//! files written through a synced temporary file. No backend borrows another's helpers.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::KeyError;

/// The largest key file accepted; a real one is well under 1 KiB.
pub(crate) const MAX_FILE_BYTES: u64 = 64 * 1024;

fn keystore_err(message: String) -> KeyError {
    KeyError::Keystore(message)
}

/// Reads a key file, refusing anything but a regular file of at most [`MAX_FILE_BYTES`].
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, KeyError> {
    let shown = path.display();
    // Check the type before opening: opening a FIFO would block.
    let meta = fs::metadata(path).map_err(|e| keystore_err(format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(keystore_err(format!("{shown} is not a regular file")));
    }
    let file =
        fs::File::open(path).map_err(|e| keystore_err(format!("cannot read {shown}: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| keystore_err(format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(keystore_err(format!("{shown} is not a regular file")));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(keystore_err(format!(
            "{shown} is {} bytes; a key file is at most {MAX_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %shown,
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "key file is accessible to group or others; it should be mode 0600"
        );
    }
    let mut bytes = Vec::new();
    // The file may grow after the size check; never read more than the bound.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| keystore_err(format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(keystore_err(format!(
            "{shown} is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Creates the keystore directory (mode `0700`) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            keystore_err(format!(
                "cannot create keystore directory {}: {e}",
                dir.display()
            ))
        })?;
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(keystore_err(format!(
            "keystore path {} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `contents` to a new file in `dir` named `.{prefix}.tmp-<random>`, mode 0600 (what
/// `tempfile` creates), fsynced. The file is deleted when the returned value is dropped, so
/// no error path leaves one behind.
pub(crate) fn write_temp(
    dir: &Path,
    prefix: &str,
    contents: &[u8],
) -> Result<tempfile::NamedTempFile, KeyError> {
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{prefix}.tmp-"))
        .rand_bytes(16)
        .tempfile_in(dir)
        .map_err(|e| {
            keystore_err(format!(
                "cannot create a temporary file in {}: {e}",
                dir.display()
            ))
        })?;
    temp.write_all(contents)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| keystore_err(format!("cannot write {}: {e}", temp.path().display())))?;
    Ok(temp)
}
