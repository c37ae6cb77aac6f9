//! Segment files: their names, listing them in order, and reading them line by line with
//! byte offsets.
//!
//! A log directory holds `segment-00000001.jsonl`, `segment-00000002.jsonl`, ... with no gaps.
//! This module must never follow a symbolic link to a segment, read a line longer than the
//! record limit into memory, or report a segment list with a gap as valid.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::record::MAX_LINE_BYTES;

/// The file name of segment `n` (1-based).
pub fn segment_name(n: u64) -> String {
    format!("segment-{n:08}.jsonl")
}

/// The segment number in a file name shaped like [`segment_name`], if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// One segment file in a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number (1-based).
    pub no: u64,
    /// Its file name.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
}

/// Lists the segments of `dir` in order. Fails if one is not a regular file (a symbolic link,
/// a directory) or if the numbers do not run 1, 2, 3, ... without a gap.
pub fn list(dir: &Path) -> Result<Vec<SegmentFile>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let Some(no) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
        if !meta.file_type().is_file() {
            let kind = if meta.file_type().is_symlink() {
                "a symbolic link"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(format!(
                "{} exists but is {kind}, not a regular file",
                path.display()
            ));
        }
        found.push(SegmentFile {
            no,
            name: segment_name(no),
            path,
        });
    }
    found.sort_by_key(|s| s.no);
    for (i, s) in found.iter().enumerate() {
        let want = i as u64 + 1;
        if s.no != want {
            return Err(format!(
                "{}: {} is missing (segments must be numbered 1, 2, 3, ... without gaps; found {})",
                dir.display(),
                segment_name(want),
                s.name
            ));
        }
    }
    Ok(found)
}

/// One step of a [`LineReader`].
#[derive(Debug)]
pub enum Next<'a> {
    /// A line.
    Line {
        /// The line, without its newline.
        bytes: &'a [u8],
        /// Its line number, from 1.
        lineno: u64,
        /// The byte offset of its first byte.
        offset: u64,
        /// Whether a newline ended it (only the last line of a file can lack one).
        terminated: bool,
    },
    /// A line longer than the record limit.
    TooLong {
        /// Its line number, from 1.
        lineno: u64,
        /// The byte offset of its first byte.
        offset: u64,
    },
    /// End of file.
    Eof,
}

/// Reads a segment line by line, with a bounded line length.
pub struct LineReader<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    offset: u64,
    lineno: u64,
}

/// Opens `path` for reading only if it is a regular file: not a symbolic link (which could
/// point anywhere, `/dev/zero` included) and not a FIFO or device (which could block a reader
/// for ever). `NotFound` stays `NotFound`.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    // NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on regular files.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

impl LineReader<File> {
    /// Opens `path` for reading, refusing a symbolic link.
    pub fn open(path: &Path) -> Result<LineReader<File>, String> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(LineReader::new(File::from(fd)))
    }
}

impl<R: Read> LineReader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            reader: BufReader::with_capacity(1 << 20, inner),
            buf: Vec::with_capacity(4096),
            offset: 0,
            lineno: 0,
        }
    }

    /// The next line.
    pub fn next_line(&mut self) -> std::io::Result<Next<'_>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(Next::Eof);
        }
        self.lineno += 1;
        let offset = self.offset;
        self.offset += n as u64;
        let terminated = self.buf.last() == Some(&b'\n');
        if !terminated && n > MAX_LINE_BYTES {
            return Ok(Next::TooLong {
                lineno: self.lineno,
                offset,
            });
        }
        let len = if terminated { n - 1 } else { n };
        Ok(Next::Line {
            bytes: &self.buf[..len],
            lineno: self.lineno,
            offset,
            terminated,
        })
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(1), "segment-00000001.jsonl");
        assert_eq!(parse_segment_name("segment-00000002.jsonl"), Some(2));
        assert_eq!(parse_segment_name("segment-00000000.jsonl"), None);
        assert_eq!(parse_segment_name("segment-2.jsonl"), None);
        assert_eq!(parse_segment_name("segment-0000000x.jsonl"), None);
        assert_eq!(parse_segment_name("segment-00000001.json"), None);
    }

    #[test]
    fn reads_lines_with_offsets() {
        let data = b"ab\n\ncde\nf".to_vec();
        let mut r = LineReader::new(&data[..]);
        let mut got = Vec::new();
        loop {
            match r.next_line().unwrap() {
                Next::Line {
                    bytes,
                    lineno,
                    offset,
                    terminated,
                } => got.push((bytes.to_vec(), lineno, offset, terminated)),
                Next::TooLong { .. } => panic!(),
                Next::Eof => break,
            }
        }
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), 1, 0, true),
                (b"".to_vec(), 2, 3, true),
                (b"cde".to_vec(), 3, 4, true),
                (b"f".to_vec(), 4, 8, false),
            ]
        );
        assert_eq!(r.offset(), 9);
        let long = vec![b'x'; MAX_LINE_BYTES + 5];
        let mut r = LineReader::new(&long[..]);
        assert!(matches!(
            r.next_line().unwrap(),
            Next::TooLong {
                lineno: 1,
                offset: 0
            }
        ));
    }
}
