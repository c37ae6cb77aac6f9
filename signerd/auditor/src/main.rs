//! `signerd-auditor`: verify, prove, query and follow a signerd audit log, without signerd.
//!
//! The commands and options are those of `signerctl audit verify|prove|check-proof|query|tail`
//! (both run [`signerd_auditor::commands`]). Arguments are parsed here by hand, so that the
//! binary adds no dependency to the crate an auditor reads. Exit status: 0 on success, 1 when
//! a command fails (a log that does not verify included), 2 for a usage error.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use signerd_auditor::commands::{self, CommandError, Format};
use signerd_auditor::query::Filter;
use signerd_auditor::witnessed;

const USAGE: &str = "\
signerd-auditor: read and verify a signerd audit log (docs/audit-log.md)

Usage:
  signerd-auditor [--json] verify DIR [--pubkey VKEY | --pubkey-file FILE] [--checkpoint FILE]...
                        [--since FILE] [--live] [--witness VKEY... --min-witnesses K]
  signerd-auditor [--json] verify DIR DIR... [--pubkey VKEY]... [--pubkey-file FILE]... [--live]
  signerd-auditor consistency --dir DIR OLD [NEW] [--pubkey VKEY | --pubkey-file FILE]
  signerd-auditor [--json] check-consistency FILE [--pubkey VKEY | --pubkey-file FILE]
  signerd-auditor prove --dir DIR SEQ [--pubkey VKEY | --pubkey-file FILE]
  signerd-auditor [--json] check-proof FILE [--pubkey VKEY | --pubkey-file FILE] [--leaf-hash HEX]
  signerd-auditor query --dir DIR [--key ID] [--client ID] [--req-id ID] [--type TYPE]
                        [--since TIME] [--until TIME] [--format json|table]
  signerd-auditor tail --dir DIR [-n N] [-f]

Commands:
  verify       Verify a log directory: records, hash chain, segments, Merkle tree heads,
               checkpoint signatures (with --pubkey) and request/result pairing. Exits 1 on
               the first failure. Given the logs of several replicas: verify each, with the
               --pubkey named by its origin, then that no two share an origin and no request
               id was signed as two different requests.
  consistency  Print an RFC 6962 consistency proof (JSON) from checkpoint file OLD to NEW
               (default: the log's latest checkpoint), after checking both against the log.
  check-consistency
               Check a consistency proof printed by `consistency` (FILE, or - for stdin).
  prove        Print an inclusion proof (JSON) of record SEQ against the latest checkpoint.
  check-proof  Check an inclusion proof printed by `prove` (FILE, or - for stdin).
  query        Print the records that match every given filter.
  tail         Print the last records; with -f, keep printing new ones.

Options:
  --pubkey VKEY        The checkpoint verifier key (C2SP vkey: <name>+<key id>+<base64 key>)
  --pubkey-file FILE   A file holding the verifier key
  --checkpoint FILE    A checkpoint kept elsewhere: the log must contain its tree (repeatable)
  --since FILE         A checkpoint verified before: the log must be consistent with it, and
                       only the records appended since are checked in full
  --live               The log is being written: records after the last checkpoint are
                       reported instead of failing the verification
  --witness VKEY       A witness's key (<name>+<key id>+<base64(0x04 || key)>): the checkpoints
                       it cosigned (DIR/cosignatures/) must be in the log (repeatable)
  --min-witnesses K    At least K of the --witness keys must have cosigned a checkpoint of the
                       log (default: 1 with --witness)
  --leaf-hash HEX      The leaf hash you hold (a receipt's): the proof must be for it
  --key, --client, --req-id
                       Records of requests for this key, by this client, with this request id
  --type TYPE          Records of this type, or of a type prefix ending in * (sign.*)
  --since, --until     Records written at or after, or before, this RFC 3339 time
  --format json|table  The exact lines (default), or one summary line per record
  -n N                 How many records `tail` prints first (default 10)
  -f, --follow         Keep printing records as they are written
  --json               Print JSON instead of text
  -h, --help           Print this help
  -V, --version        Print the version
";

/// A parsed command line.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Version,
    Verify {
        dir: PathBuf,
        key: KeyArgs,
        checkpoints: Vec<PathBuf>,
        flags: commands::VerifyFlags,
        witnesses: Vec<String>,
        min_witnesses: Option<usize>,
    },
    /// `verify` with several directories: the logs of several replicas.
    VerifyLogs {
        dirs: Vec<PathBuf>,
        keys: Vec<String>,
        key_files: Vec<PathBuf>,
        live: bool,
    },
    Prove {
        dir: PathBuf,
        seq: u64,
        key: KeyArgs,
    },
    Consistency {
        dir: PathBuf,
        old: PathBuf,
        new: Option<PathBuf>,
        key: KeyArgs,
    },
    CheckConsistency {
        file: PathBuf,
        key: KeyArgs,
    },
    CheckProof {
        file: PathBuf,
        key: KeyArgs,
        leaf_hash: Option<String>,
    },
    Query {
        dir: PathBuf,
        filter: Filter,
        format: Format,
    },
    Tail {
        dir: PathBuf,
        lines: usize,
        follow: bool,
    },
}

/// `--pubkey` or `--pubkey-file`.
#[derive(Debug, Default, PartialEq)]
struct KeyArgs {
    text: Option<String>,
    file: Option<PathBuf>,
}

/// The options of one command, after parsing.
#[derive(Debug, Default)]
struct Options {
    values: Vec<(&'static str, OsString)>,
    flags: Vec<&'static str>,
    positional: Vec<OsString>,
}

impl Options {
    /// Splits `args` into options and positional arguments. `takes_value` names the options
    /// that take a value (as `--name VALUE` or `--name=VALUE`), `flags` those that do not;
    /// each is given as (name, spellings). After `--`, everything is positional.
    fn parse(
        args: &[OsString],
        takes_value: &[(&'static str, &[&str])],
        flags: &[(&'static str, &[&str])],
    ) -> Result<Options, String> {
        let mut out = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(text) = arg.to_str().filter(|t| t.starts_with('-') && *t != "-") else {
                out.positional.push(arg.clone());
                continue;
            };
            if text == "--" {
                out.positional.extend(args.by_ref().cloned());
                break;
            }
            let (name, inline) = match text.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
                _ => (text, None),
            };
            if let Some((canonical, _)) = takes_value.iter().find(|(_, s)| s.contains(&name)) {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                out.values.push((canonical, value));
            } else if let Some((canonical, _)) = flags.iter().find(|(_, s)| s.contains(&name)) {
                if inline.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                out.flags.push(canonical);
            } else {
                return Err(format!("unknown option {name}"));
            }
        }
        Ok(out)
    }

    /// The value of an option given at most once.
    fn one(&self, name: &str) -> Result<Option<&OsString>, String> {
        let mut found = self.values.iter().filter(|(n, _)| *n == name);
        let first = found.next().map(|(_, v)| v);
        if found.next().is_some() {
            return Err(format!("{name} is given more than once"));
        }
        Ok(first)
    }

    fn text(&self, name: &str) -> Result<Option<String>, String> {
        self.one(name)?
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name}: not UTF-8"))
            })
            .transpose()
    }

    fn path(&self, name: &str) -> Result<Option<PathBuf>, String> {
        Ok(self.one(name)?.map(PathBuf::from))
    }

    fn required_path(&self, name: &str) -> Result<PathBuf, String> {
        self.path(name)?
            .ok_or_else(|| format!("{name} is required"))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    /// The only positional argument, `what`.
    fn single(&self, what: &str) -> Result<&OsString, String> {
        match self.positional.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("{what} is required")),
            [_, extra, ..] => Err(format!("unexpected argument {}", extra.to_string_lossy())),
        }
    }

    fn key(&self) -> Result<KeyArgs, String> {
        let key = KeyArgs {
            text: self.text("--pubkey")?,
            file: self.path("--pubkey-file")?,
        };
        if key.text.is_some() && key.file.is_some() {
            return Err("give --pubkey or --pubkey-file, not both".to_owned());
        }
        Ok(key)
    }
}

const KEY: [(&str, &[&str]); 2] = [
    ("--pubkey", &["--pubkey"]),
    ("--pubkey-file", &["--pubkey-file"]),
];

/// Parses the arguments after the program name. `--json`, `--help` and `--version` may come
/// anywhere; returns whether `--json` was given.
fn parse(args: &[OsString]) -> Result<(Command, bool), String> {
    let is = |a: &OsString, names: &[&str]| a.to_str().is_some_and(|t| names.contains(&t));
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let json = args[..end].iter().any(|a| is(a, &["--json"]));
    if args[..end].iter().any(|a| is(a, &["-h", "--help"])) {
        return Ok((Command::Help, json));
    }
    if args[..end].iter().any(|a| is(a, &["-V", "--version"])) {
        return Ok((Command::Version, json));
    }
    let mut rest: Vec<OsString> = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        if i >= end || !is(a, &["--json"]) {
            rest.push(a.clone());
        }
    }
    let Some((name, rest)) = rest.split_first() else {
        return Ok((Command::Help, json));
    };
    let name = name.to_string_lossy();
    let command = match name.as_ref() {
        "verify" => {
            let o = Options::parse(
                rest,
                &[
                    KEY[0],
                    KEY[1],
                    ("--checkpoint", &["--checkpoint"]),
                    ("--since", &["--since"]),
                    ("--witness", &["--witness"]),
                    ("--min-witnesses", &["--min-witnesses"]),
                ],
                &[("--live", &["--live"])],
            )?;
            let values = |name: &str| -> Vec<&OsString> {
                o.values
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v)
                    .collect()
            };
            if o.positional.len() > 1 {
                for one_log in ["--checkpoint", "--since", "--witness", "--min-witnesses"] {
                    if !values(one_log).is_empty() {
                        return Err(format!(
                            "{one_log} is about one log: verify that log on its own"
                        ));
                    }
                }
                return Ok((
                    Command::VerifyLogs {
                        dirs: o.positional.iter().map(PathBuf::from).collect(),
                        keys: values("--pubkey")
                            .into_iter()
                            .map(|v| v.to_string_lossy().into_owned())
                            .collect(),
                        key_files: values("--pubkey-file")
                            .into_iter()
                            .map(PathBuf::from)
                            .collect(),
                        live: o.flag("--live"),
                    },
                    json,
                ));
            }
            let min_witnesses = match values("--min-witnesses").as_slice() {
                [] => None,
                [k] => Some(
                    k.to_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| "--min-witnesses needs a number".to_owned())?,
                ),
                _ => return Err("--min-witnesses is given twice".to_owned()),
            };
            Command::Verify {
                dir: PathBuf::from(o.single("DIR")?),
                key: o.key()?,
                flags: commands::VerifyFlags {
                    live: o.flag("--live"),
                    since: o.path("--since")?,
                },
                checkpoints: values("--checkpoint")
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                witnesses: values("--witness")
                    .into_iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
                min_witnesses,
            }
        }
        "consistency" => {
            let o = Options::parse(rest, &[KEY[0], KEY[1], ("--dir", &["--dir"])], &[])?;
            let (old, new) = match o.positional.as_slice() {
                [old] => (PathBuf::from(old), None),
                [old, new] => (PathBuf::from(old), Some(PathBuf::from(new))),
                [] => return Err("OLD (a checkpoint file) is required".to_owned()),
                [_, _, extra, ..] => {
                    return Err(format!("unexpected argument {}", extra.to_string_lossy()));
                }
            };
            Command::Consistency {
                dir: o.required_path("--dir")?,
                old,
                new,
                key: o.key()?,
            }
        }
        "check-consistency" => {
            let o = Options::parse(rest, &[KEY[0], KEY[1]], &[])?;
            Command::CheckConsistency {
                file: PathBuf::from(o.single("FILE")?),
                key: o.key()?,
            }
        }
        "prove" => {
            let o = Options::parse(rest, &[KEY[0], KEY[1], ("--dir", &["--dir"])], &[])?;
            let seq = o.single("SEQ")?;
            Command::Prove {
                dir: o.required_path("--dir")?,
                seq: seq
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("SEQ {} is not a number", seq.to_string_lossy()))?,
                key: o.key()?,
            }
        }
        "check-proof" => {
            let o = Options::parse(
                rest,
                &[KEY[0], KEY[1], ("--leaf-hash", &["--leaf-hash"])],
                &[],
            )?;
            Command::CheckProof {
                file: PathBuf::from(o.single("FILE")?),
                key: o.key()?,
                leaf_hash: o.text("--leaf-hash")?,
            }
        }
        "query" => {
            let o = Options::parse(
                rest,
                &[
                    ("--dir", &["--dir"]),
                    ("--key", &["--key"]),
                    ("--client", &["--client"]),
                    ("--req-id", &["--req-id"]),
                    ("--type", &["--type"]),
                    ("--since", &["--since"]),
                    ("--until", &["--until"]),
                    ("--format", &["--format"]),
                ],
                &[],
            )?;
            if let Some(extra) = o.positional.first() {
                return Err(format!("unexpected argument {}", extra.to_string_lossy()));
            }
            let format = match o.text("--format")?.as_deref() {
                None | Some("json") => Format::Json,
                Some("table") => Format::Table,
                Some(other) => return Err(format!("--format {other}: expected json or table")),
            };
            Command::Query {
                dir: o.required_path("--dir")?,
                filter: Filter {
                    key: o.text("--key")?,
                    client: o.text("--client")?,
                    req_id: o.text("--req-id")?,
                    kind: o.text("--type")?,
                    since: o.text("--since")?,
                    until: o.text("--until")?,
                },
                format,
            }
        }
        "tail" => {
            let o = Options::parse(
                rest,
                &[("--dir", &["--dir"]), ("-n", &["-n", "--lines"])],
                &[("-f", &["-f", "--follow"])],
            )?;
            if let Some(extra) = o.positional.first() {
                return Err(format!("unexpected argument {}", extra.to_string_lossy()));
            }
            let lines = match o.text("-n")? {
                None => 10,
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("-n {n}: not a number of lines"))?,
            };
            Command::Tail {
                dir: o.required_path("--dir")?,
                lines,
                follow: o.flag("-f"),
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok((command, json))
}

fn run(command: Command, json: bool) -> Result<(), CommandError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let key = |k: &KeyArgs| commands::verifier_key(k.text.as_deref(), k.file.as_deref());
    let done = match command {
        Command::Help => out.write_all(USAGE.as_bytes()).map_err(CommandError::from),
        Command::Version => writeln!(out, "signerd-auditor {}", env!("CARGO_PKG_VERSION"))
            .map_err(CommandError::from),
        Command::Verify {
            dir,
            key: k,
            checkpoints,
            witnesses,
            min_witnesses,
            flags,
        } => {
            if witnesses.is_empty() && min_witnesses.is_none() {
                commands::verify(&dir, key(&k)?, &checkpoints, &flags, json, &mut out)
            } else {
                let keys = witnessed::parse_keys(&witnesses)?;
                let min = min_witnesses.unwrap_or(1);
                witnessed::verify(
                    &dir,
                    key(&k)?,
                    &checkpoints,
                    &flags,
                    &keys,
                    min,
                    json,
                    &mut out,
                )
            }
        }
        Command::VerifyLogs {
            dirs,
            keys,
            key_files,
            live,
        } => {
            let mut parsed = Vec::new();
            for text in &keys {
                parsed.extend(commands::verifier_key(Some(text), None)?);
            }
            for file in &key_files {
                parsed.extend(commands::verifier_key(None, Some(file))?);
            }
            signerd_auditor::replicas::verify_logs(&dirs, parsed, live, json, &mut out)
        }
        Command::Prove { dir, seq, key: k } => {
            commands::prove(&dir, seq, key(&k)?.as_ref(), &mut out)
        }
        Command::Consistency {
            dir,
            old,
            new,
            key: k,
        } => commands::consistency(&dir, &old, new.as_deref(), key(&k)?.as_ref(), &mut out),
        Command::CheckConsistency { file, key: k } => {
            commands::check_consistency(&file, key(&k)?.as_ref(), json, &mut out)
        }
        Command::CheckProof {
            file,
            key: k,
            leaf_hash,
        } => commands::check_proof(
            &file,
            key(&k)?.as_ref(),
            leaf_hash.as_deref(),
            json,
            &mut out,
        ),
        Command::Query {
            dir,
            filter,
            format,
        } => commands::query(&dir, &filter, format, &mut out),
        Command::Tail { dir, lines, follow } => commands::tail(&dir, lines, follow, &mut out),
    };
    out.flush()?;
    done
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (command, json) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn ok(line: &str) -> (Command, bool) {
        parse(&args(line)).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &str) -> String {
        match parse(&args(line)) {
            Ok(c) => panic!("{line}: parsed as {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn verify_takes_witness_keys_and_a_minimum() {
        let (
            Command::Verify {
                witnesses,
                min_witnesses,
                ..
            },
            _,
        ) = ok("verify /log --witness a+1 --witness=b+2 --min-witnesses 2")
        else {
            panic!("not verify");
        };
        assert_eq!(witnesses, ["a+1", "b+2"]);
        assert_eq!(min_witnesses, Some(2));
        assert!(err("verify /log --min-witnesses x").contains("needs a number"));
        assert!(err("verify /log --min-witnesses 1 --min-witnesses 2").contains("twice"));
    }

    #[test]
    fn commands_parse_as_signerctl_audit_spells_them() {
        assert_eq!(
            ok("verify /log --pubkey-file vkey --checkpoint a --checkpoint=b --json"),
            (
                Command::Verify {
                    dir: "/log".into(),
                    key: KeyArgs {
                        text: None,
                        file: Some("vkey".into())
                    },
                    checkpoints: vec!["a".into(), "b".into()],
                    flags: commands::VerifyFlags::default(),
                    witnesses: vec![],
                    min_witnesses: None,
                },
                true
            )
        );
        assert_eq!(
            ok("prove --dir /log 8 --pubkey o+1+A"),
            (
                Command::Prove {
                    dir: "/log".into(),
                    seq: 8,
                    key: KeyArgs {
                        text: Some("o+1+A".into()),
                        file: None
                    },
                },
                false
            )
        );
        assert_eq!(
            ok("--json check-proof - --leaf-hash 0xab").0,
            Command::CheckProof {
                file: "-".into(),
                key: KeyArgs::default(),
                leaf_hash: Some("0xab".into()),
            }
        );
        let (
            Command::Query {
                dir,
                filter,
                format,
            },
            _,
        ) = ok(
            "query --dir d --key hot --client app --req-id r --type sign.* --since 2026-01-01T00:00:00Z --format table",
        )
        else {
            panic!()
        };
        assert_eq!(dir, PathBuf::from("d"));
        assert_eq!(format, Format::Table);
        assert_eq!(
            (
                filter.key,
                filter.client,
                filter.req_id,
                filter.kind,
                filter.since,
                filter.until
            ),
            (
                Some("hot".into()),
                Some("app".into()),
                Some("r".into()),
                Some("sign.*".into()),
                Some("2026-01-01T00:00:00Z".into()),
                None
            )
        );
        assert_eq!(
            ok("tail --dir d -n 2 -f").0,
            Command::Tail {
                dir: "d".into(),
                lines: 2,
                follow: true
            }
        );
        assert_eq!(
            ok("tail --dir d").0,
            Command::Tail {
                dir: "d".into(),
                lines: 10,
                follow: false
            }
        );
        assert_eq!(
            ok("verify /a /b --pubkey a+1+A --pubkey-file vb --pubkey=c+1+C --live"),
            (
                Command::VerifyLogs {
                    dirs: vec!["/a".into(), "/b".into()],
                    keys: vec!["a+1+A".into(), "c+1+C".into()],
                    key_files: vec!["vb".into()],
                    live: true,
                },
                false
            )
        );
        assert_eq!(ok("").0, Command::Help);
        assert_eq!(ok("verify --help").0, Command::Help);
        assert_eq!(ok("-V").0, Command::Version);
        // After `--`, a dash is a path.
        let (Command::Verify { dir, .. }, _) = ok("verify -- --odd-dir") else {
            panic!()
        };
        assert_eq!(dir, PathBuf::from("--odd-dir"));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (line, want) in [
            ("frobnicate", "unknown command"),
            ("verify", "DIR is required"),
            ("verify a b --since c", "--since is about one log"),
            ("verify a b --witness w", "--witness is about one log"),
            ("verify a --pubkey", "--pubkey needs a value"),
            ("verify a --pubkey k --pubkey-file f", "not both"),
            ("verify a --frob", "unknown option --frob"),
            ("prove --dir d x", "not a number"),
            ("prove 3", "--dir is required"),
            ("prove --dir a --dir b 3", "more than once"),
            ("query --dir d --format yaml", "expected json or table"),
            ("tail --dir d -n x", "not a number"),
            ("tail --dir d --follow=1", "takes no value"),
        ] {
            let e = err(line);
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
