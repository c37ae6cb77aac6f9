//! Address-book first loads for offline tools: `signerctl policy explain` cannot read the
//! daemon's clock, so it is told when each entry of a book with a cooling-off period was first
//! loaded (from an audit log, or as one time given), and says which it used.

use std::path::Path;

use anyhow::Context;
use signerd_policy::{FirstLoaded, Policy};

/// Attaches first loads to `policy`'s cooling-off entries, from the last `policy.load` of the
/// audit log in `audit` and/or as `loaded_at` (RFC 3339) for every entry the log does not
/// list. Returns a line saying what was used, or `None` when the policy has no such entry.
pub(crate) fn attach_first_loads(
    policy: &mut Policy,
    audit: Option<&Path>,
    loaded_at: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if policy.cooling_entries().is_empty() {
        return Ok(None);
    }
    let at = loaded_at
        .map(|t| {
            signerd_auditor::rfc3339::parse_lenient(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok())
                .with_context(|| {
                    format!(
                        "--loaded-at: `{t}` is not an RFC 3339 time such as 2026-01-01T10:00:00Z"
                    )
                })
        })
        .transpose()?;
    let known = match audit {
        Some(dir) => {
            let scanned = signerd::state::reconcile::scan(dir, 0, &mut |_| Ok(()))
                .map_err(|e| anyhow::anyhow!("--audit {}: {e}", dir.display()))?;
            signerd::policy_file::first_loaded(&scanned.book_entries)
                .map_err(|e| anyhow::anyhow!("--audit {}: {e}", dir.display()))?
        }
        None => FirstLoaded::new(),
    };
    let listed = known.len();
    let new = policy.set_first_loaded(&known, at);
    let rest = match at {
        Some(t) => format!("as if first loaded at {}", signerd::approvals::rfc3339(t)),
        None => "has no known first load, so it is not usable".to_owned(),
    };
    Ok(Some(match audit {
        Some(dir) => format!(
            "address-book first loads: from the last policy.load of {} ({listed} listed); {} not listed there: {rest}",
            dir.display(),
            new.len()
        ),
        None => format!("address-book first loads: every entry {rest}"),
    }))
}
