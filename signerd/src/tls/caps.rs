//! Connection caps per client identity: one identity holds at most
//! `server.max_connections_per_identity` connections, and every certificate mapped to no
//! identity together at most `server.max_connections_unmapped`. Configuration loading checks
//! that both caps together stay below `server.max_connections`, so that neither one identity
//! nor a stolen-but-unmapped certificate can take every connection.
//!
//! The table holds one entry per identity with a connection open, plus one for the unmapped
//! certificates: its size is bounded by the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Whose connection a connection counts as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A configured identity, by id.
    Identity(String),
    /// Any certificate that maps to no single identity.
    Unmapped,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Identity(id) => write!(f, "identity `{id}`"),
            Holder::Unmapped => f.write_str("certificates mapped to no identity"),
        }
    }
}

/// The connections each holder has open.
#[derive(Debug)]
pub struct ConnCaps {
    per_identity: usize,
    unmapped: usize,
    open: Mutex<HashMap<Holder, usize>>,
}

/// A connection counted against its holder's cap until dropped.
#[derive(Debug)]
pub struct CapSlot {
    caps: Arc<ConnCaps>,
    holder: Holder,
}

impl ConnCaps {
    /// Caps of `per_identity` connections per identity and `unmapped` for all unmapped
    /// certificates together.
    pub fn new(per_identity: usize, unmapped: usize) -> Arc<ConnCaps> {
        Arc::new(ConnCaps {
            per_identity,
            unmapped,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more connection of `holder`, or says why not.
    pub fn take(self: &Arc<Self>, holder: Holder) -> Result<CapSlot, String> {
        let (cap, setting) = match holder {
            Holder::Identity(_) => (self.per_identity, "server.max_connections_per_identity"),
            Holder::Unmapped => (self.unmapped, "server.max_connections_unmapped"),
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(holder.clone()).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                open.remove(&holder);
            }
            return Err(format!(
                "connection refused: {holder} already hold {cap} connections ({setting})"
            ));
        }
        *n += 1;
        Ok(CapSlot {
            caps: self.clone(),
            holder,
        })
    }

    #[cfg(test)]
    fn open_of(&self, holder: &Holder) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(holder).copied().unwrap_or(0)
    }
}

impl Drop for CapSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_identity_and_the_unmapped_together_are_capped() {
        let caps = ConnCaps::new(2, 1);
        let app = Holder::Identity("app".into());
        let bob = Holder::Identity("bob".into());
        let a1 = caps.take(app.clone()).unwrap();
        let _a2 = caps.take(app.clone()).unwrap();
        let refused = caps.take(app.clone()).unwrap_err();
        assert!(
            refused.contains("identity `app` already hold 2"),
            "{refused}"
        );
        assert!(
            refused.contains("server.max_connections_per_identity"),
            "{refused}"
        );
        // Another identity has its own cap.
        let _b1 = caps.take(bob.clone()).unwrap();
        let _u1 = caps.take(Holder::Unmapped).unwrap();
        let refused = caps.take(Holder::Unmapped).unwrap_err();
        assert!(
            refused.contains("server.max_connections_unmapped"),
            "{refused}"
        );
        // A closed connection frees its slot.
        drop(a1);
        assert_eq!(caps.open_of(&app), 1);
        let _a3 = caps.take(app.clone()).unwrap();
        assert_eq!(caps.open_of(&app), 2);
    }

    #[test]
    fn the_table_forgets_holders_without_connections() {
        let caps = ConnCaps::new(1, 0);
        assert!(caps.take(Holder::Unmapped).is_err());
        for i in 0..100 {
            drop(caps.take(Holder::Identity(format!("id{i}"))).unwrap());
        }
        assert!(caps.open.lock().unwrap().is_empty());
    }
}
