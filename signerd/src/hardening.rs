//! Process hardening applied at start-up, before any secret is read: no core dumps, a process
//! that other processes of the same user cannot attach to or read (`PR_SET_DUMPABLE` 0), and,
//! when configured, all memory locked so that keys never reach swap.
//!
//! Each step fails closed: if the kernel refuses, signerd does not start, naming the step.

use rustix::process::{DumpableBehavior, Resource, Rlimit};

/// Why the process could not be hardened.
#[derive(Debug, thiserror::Error)]
#[error("hardening: {0}")]
pub struct HardeningError(String);

/// What was applied, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardened {
    /// Memory is locked (`mlockall`).
    pub memory_locked: bool,
}

/// Disables core dumps (`RLIMIT_CORE` 0), makes the process non-dumpable, and with
/// `lock_memory` locks current and future memory (`mlockall(MCL_CURRENT | MCL_FUTURE)`, which
/// needs `RLIMIT_MEMLOCK` large enough for the whole daemon: `LimitMEMLOCK=infinity` under
/// systemd).
pub fn apply(lock_memory: bool) -> Result<Hardened, HardeningError> {
    rustix::process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| HardeningError(format!("setting RLIMIT_CORE to 0: {e}")))?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| HardeningError(format!("prctl(PR_SET_DUMPABLE, 0): {e}")))?;
    if lock_memory {
        rustix::mm::mlockall(
            rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE,
        )
        .map_err(|e| {
            HardeningError(format!(
                "mlockall: {e} (raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity, or set \
                     server.lock_memory = false)"
            ))
        })?;
    }
    Ok(Hardened {
        memory_locked: lock_memory,
    })
}

/// Reads back what [`apply`] set: (core limit, dumpable).
pub fn current() -> Result<(Option<u64>, bool), HardeningError> {
    let core = rustix::process::getrlimit(Resource::Core);
    let dumpable = rustix::process::dumpable_behavior()
        .map_err(|e| HardeningError(format!("prctl(PR_GET_DUMPABLE): {e}")))?;
    Ok((core.current, dumpable != DumpableBehavior::NotDumpable))
}

/// Open files the daemon needs beside its client connections: audit segments, the state
/// store, key backends, listeners and their in-flight handshakes.
pub const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit, which needs no
/// privilege, and returns the limit in force. Every client connection takes a file
/// descriptor, so `server.max_connections` needs about as many plus
/// [`FILES_BESIDE_CONNECTIONS`]; under systemd, `LimitNOFILE=` sets the hard limit.
pub fn raise_open_files() -> Result<Option<u64>, HardeningError> {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(limit.current);
    }
    rustix::process::setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .map_err(|e| HardeningError(format!("raising RLIMIT_NOFILE to its hard limit: {e}")))?;
    Ok(limit.maximum)
}
