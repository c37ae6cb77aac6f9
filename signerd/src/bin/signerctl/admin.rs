//! `signerctl admin`: operations on a running daemon that need the `admin` role. They use the
//! same connection settings as every command that talks to the daemon (`--ca`,
//! `--client-cert`, `--client-key`, `--endpoint`, or `--dev DIR --as NAME`).

use clap::Subcommand;
use serde_json::json;
use signerd::client::ClientSettings;
use signerd_proto::v1::{self, admin_client::AdminClient};

#[derive(Subcommand)]
pub(crate) enum AdminCmd {
    /// Ask the daemon to re-read, validate and install its policy file (`Admin.ReloadPolicy`),
    /// and print what it answered. The running policy stays on any error.
    ReloadPolicy {
        /// Install the file even though its serial is not higher than the running one
        /// (recorded as forced in the audit log).
        #[arg(long)]
        force: bool,
    },
}

/// What the daemon answered, for people.
fn reloaded_text(r: &v1::ReloadPolicyResponse) -> String {
    if !r.changed {
        return format!(
            "policy unchanged: the file is the running policy (serial {}, sha256 {})",
            r.serial, r.hash
        );
    }
    format!(
        "policy reloaded: serial {} (sha256 {}) replaces serial {} (sha256 {})",
        r.serial, r.hash, r.previous_serial, r.previous_hash
    )
}

pub(crate) async fn run(
    settings: ClientSettings,
    cmd: AdminCmd,
    json_out: bool,
) -> anyhow::Result<()> {
    let AdminCmd::ReloadPolicy { force } = cmd;
    let mut client = AdminClient::new(signerd::client::channel(&settings).await?);
    let r = client
        .reload_policy(v1::ReloadPolicyRequest { force })
        .await
        .map_err(|s| anyhow::anyhow!("policy not reloaded: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if json_out {
        println!(
            "{:#}",
            json!({
                "changed": r.changed,
                "serial": r.serial,
                "hash": r.hash,
                "previous_serial": r.previous_serial,
                "previous_hash": r.previous_hash,
            })
        );
    } else {
        println!("{}", reloaded_text(&r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_whether_anything_changed() {
        let mut r = v1::ReloadPolicyResponse {
            serial: 2,
            hash: "bb".into(),
            previous_serial: 1,
            previous_hash: "aa".into(),
            changed: true,
        };
        assert_eq!(
            reloaded_text(&r),
            "policy reloaded: serial 2 (sha256 bb) replaces serial 1 (sha256 aa)"
        );
        r.changed = false;
        r.serial = 1;
        r.hash = "aa".into();
        assert_eq!(
            reloaded_text(&r),
            "policy unchanged: the file is the running policy (serial 1, sha256 aa)"
        );
    }
}
