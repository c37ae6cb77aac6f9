//! One connection to a PKCS#11 token: the loaded module, the selected slot, a logged-in user,
//! the key objects resolved to handles, and a pool of sessions.
//!
//! Everything here blocks (PKCS#11 is a synchronous C API): callers run it on blocking
//! threads, never on the async runtime. A connection is never repaired in place: when the
//! token fails, the backend drops the whole connection and builds a new one, which loads the
//! module and logs in again. The PIN is only passed to `C_Login` and never appears in an error.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;

use super::config::Pkcs11Config;
use super::ec;
use crate::keys::{Algorithm, KeyInfo, Protection};

/// The handle slot of the audit checkpoint key: a name no key id can take (key ids have no
/// spaces), so no client request can reach its handle.
pub(super) const AUDIT_SLOT: &str = "audit checkpoint key";

/// A key pair in the token, as signerd knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TokenKey {
    /// Public facts (id, algorithm, public key).
    pub(super) info: KeyInfo,
    /// The private key's `CKA_ID`.
    pub(super) ckid: Vec<u8>,
    /// The private key's `CKA_LABEL`.
    pub(super) label: Vec<u8>,
    /// The token's serial and the private key's protection attributes, as read at start.
    pub(super) protection: Protection,
}

/// A connection: module, slot, login, key handles and idle sessions. Fields drop in order:
/// the sessions close before the module is finalized.
pub(super) struct Conn {
    idle: Mutex<Vec<Session>>,
    handles: HashMap<String, ObjectHandle>,
    slot: Slot,
    /// The token's serial number.
    serial: String,
    ctx: Module,
}

/// An initialized module, finalized when dropped so the next connection can initialize it
/// again (cryptoki does not finalize on drop).
struct Module(Pkcs11);

/// `C_Initialize` and `C_Finalize` act on the whole process, not on one context: a connection
/// being dropped on one thread (the last call of a lost connection returning late) must not
/// finalize the module while the monitor initializes it again on another. Both take this lock.
/// No other call can overlap a `C_Finalize`: every call holds the connection it runs on, and the
/// module is finalized only when the last holder lets go.
static LIFECYCLE: Mutex<()> = Mutex::new(());

fn lifecycle() -> std::sync::MutexGuard<'static, ()> {
    LIFECYCLE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Module {
    fn drop(&mut self) {
        let _lifecycle = lifecycle();
        if let Err(e) = self.0.clone().finalize() {
            tracing::debug!(error = %describe(&e), "C_Finalize");
        }
    }
}

impl std::ops::Deref for Module {
    type Target = Pkcs11;
    fn deref(&self) -> &Pkcs11 {
        &self.0
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("slot", &self.slot.id())
            .field("keys", &self.handles.len())
            .finish_non_exhaustive()
    }
}

/// Describes a cryptoki error for logs and statuses (return codes only, never data).
pub(super) fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, func) => format!("C_{func:?} returned {}", rv_name(*rv)),
        CkError::LibraryLoading(e) => format!("cannot load the PKCS#11 module: {e}"),
        other => other.to_string(),
    }
}

fn rv_name(rv: RvError) -> String {
    // `RvError`'s Display is a long sentence; the constant name is what operators search for.
    let name = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Conn {
    /// Loads the module, finds the token, logs in and opens the first session.
    pub(super) fn open(cfg: &Pkcs11Config, pin: &SecretString) -> Result<Conn, String> {
        let lifecycle = lifecycle();
        let ctx = Pkcs11::new(&cfg.module)
            .map_err(|e| format!("{}: {}", cfg.module.display(), describe(&e)))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // A previous connection's calls still hold the module (a hung call after a
            // timeout); it cannot be reinitialized until they return.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                return Err(
                    "the PKCS#11 module is still held by calls of the previous connection".into(),
                );
            }
            Err(e) => return Err(describe(&e)),
        }
        drop(lifecycle);
        // From here on, every exit finalizes the module.
        let ctx = Module(ctx);
        let (slot, serial) = find_slot(&ctx, cfg)?;
        let session = ctx.open_rw_session(slot).map_err(|e| describe(&e))?;
        match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err("login refused: the PIN is incorrect".into());
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err("login refused: the PIN is locked".into());
            }
            Err(e) => return Err(format!("login failed: {}", describe(&e))),
        }
        Ok(Conn {
            ctx,
            slot,
            serial,
            handles: HashMap::new(),
            idle: Mutex::new(vec![session]),
        })
    }

    /// Finds every key pair in the token that signerd can use, named by adoption entries or
    /// else by label. Objects signerd cannot use are skipped with a warning; two objects
    /// claiming one id, or an adoption entry that matches nothing, are errors.
    ///
    /// The private key labelled `audit_label` is the audit checkpoint key: it is returned
    /// apart and never as a client key, and an adoption entry that matches it is an error.
    pub(super) fn scan(
        &mut self,
        cfg: &Pkcs11Config,
        audit_label: Option<&str>,
    ) -> Result<(BTreeMap<String, TokenKey>, Option<TokenKey>), String> {
        let session = self.session()?;
        let result = self.scan_with(&session, cfg, audit_label);
        self.put_back(session);
        result
    }

    fn scan_with(
        &mut self,
        session: &Session,
        cfg: &Pkcs11Config,
        audit_label: Option<&str>,
    ) -> Result<(BTreeMap<String, TokenKey>, Option<TokenKey>), String> {
        let mut found = BTreeMap::new();
        let mut audit: Option<TokenKey> = None;
        let mut adopted = vec![false; cfg.adopt.len()];
        for key_type in [KeyType::EC, KeyType::EC_EDWARDS] {
            let objects = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(key_type),
                ])
                .map_err(|e| describe(&e))?;
            for obj in objects {
                let (label, ckid, params) = read_names(session, obj)?;
                let adopt = cfg.adopt.iter().position(|a| {
                    a.label.as_deref().map(str::as_bytes) == Some(&label[..])
                        || a.ckid
                            .as_deref()
                            .and_then(|h| hex::decode(h).ok())
                            .as_deref()
                            == Some(&ckid[..])
                });
                if let Some(audit_label) = audit_label
                    && audit_label.as_bytes() == &label[..]
                {
                    if let Some(i) = adopt {
                        return Err(format!(
                            "keys.pkcs11.adopt `{}` matches the audit checkpoint key `{audit_label}`, \
                             which is never a client key",
                            cfg.adopt[i].id
                        ));
                    }
                    if audit.is_some() {
                        return Err(format!(
                            "two private keys in the token are labelled `{audit_label}`, the \
                             audit checkpoint key's label; keep exactly one"
                        ));
                    }
                    if params.as_deref().and_then(ec::algorithm_of) != Some(Algorithm::Ed25519) {
                        return Err(format!(
                            "the audit checkpoint key `{audit_label}` in the token is not an \
                             Ed25519 key; checkpoints are signed with Ed25519"
                        ));
                    }
                    let public_key = read_public(session, &label, &ckid, Algorithm::Ed25519)
                        .map_err(|e| format!("the audit checkpoint key `{audit_label}`: {e}"))?;
                    let protection = read_protection(session, obj, &self.serial, &ckid)?;
                    audit = Some(TokenKey {
                        info: KeyInfo {
                            id: audit_label.to_owned(),
                            algorithm: Algorithm::Ed25519,
                            backend: super::BACKEND_NAME,
                            public_key,
                            version: None,
                        },
                        ckid,
                        label,
                        protection,
                    });
                    self.handles.insert(AUDIT_SLOT.to_owned(), obj);
                    continue;
                }
                let id = match adopt {
                    Some(i) => {
                        adopted[i] = true;
                        cfg.adopt[i].id.clone()
                    }
                    None => match std::str::from_utf8(&label) {
                        Ok(l) if crate::keys::key_id(l).is_ok() => l.to_owned(),
                        _ => {
                            tracing::warn!(
                                label = %String::from_utf8_lossy(&label),
                                ckid = %hex::encode(&ckid),
                                "PKCS#11 private key skipped: its label is not a key id and no \
                                 [[keys.pkcs11.adopt]] entry names it"
                            );
                            continue;
                        }
                    },
                };
                let Some(algorithm) = params.as_deref().and_then(ec::algorithm_of) else {
                    tracing::warn!(key = %id, "PKCS#11 key skipped: its curve is not secp256k1, P-256 or Ed25519");
                    continue;
                };
                let public_key = read_public(session, &label, &ckid, algorithm)
                    .map_err(|e| format!("key `{id}`: {e}"))?;
                let protection = read_protection(session, obj, &self.serial, &ckid)
                    .map_err(|e| format!("key `{id}`: {e}"))?;
                let key = TokenKey {
                    info: KeyInfo {
                        id: id.clone(),
                        algorithm,
                        backend: super::BACKEND_NAME,
                        public_key,
                        version: None,
                    },
                    ckid,
                    label,
                    protection,
                };
                if found.insert(id.clone(), key).is_some() {
                    return Err(format!(
                        "two private keys in the token would both be key `{id}`; give them \
                         distinct labels or adopt them explicitly"
                    ));
                }
                self.handles.insert(id, obj);
            }
        }
        if let Some(i) = adopted.iter().position(|a| !a) {
            return Err(format!(
                "keys.pkcs11.adopt `{}`: no private key in the token matches it",
                cfg.adopt[i].id
            ));
        }
        Ok((found, audit))
    }

    /// Resolves the handles of keys known from an earlier connection (`(slot, key)`: the
    /// key id, or [`AUDIT_SLOT`]), checking that each object still has the same public key (a
    /// different key under the same label is refused).
    pub(super) fn resolve<'a>(
        &mut self,
        keys: impl IntoIterator<Item = (&'a str, &'a TokenKey)>,
    ) -> Result<(), String> {
        let session = self.session()?;
        let result = (|| {
            for (id, key) in keys {
                let objects = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(key.ckid.clone()),
                        Attribute::Label(key.label.clone()),
                    ])
                    .map_err(|e| describe(&e))?;
                let [obj] = objects[..] else {
                    return Err(format!(
                        "key `{id}`: expected one private key in the token, found {}",
                        objects.len()
                    ));
                };
                let public = read_public(&session, &key.label, &key.ckid, key.info.algorithm)?;
                if public != key.info.public_key {
                    return Err(format!(
                        "key `{id}`: the token now holds a different key under its label"
                    ));
                }
                self.handles.insert(id.to_owned(), obj);
            }
            Ok(())
        })();
        self.put_back(session);
        result
    }

    /// An idle session, or a new one (the token's login covers every session of the
    /// application).
    pub(super) fn session(&self) -> Result<Session, String> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| describe(&e))
    }

    /// Returns a session that worked to the pool.
    pub(super) fn put_back(&self, session: Session) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(session);
    }

    /// The handle of key `id` (or of [`AUDIT_SLOT`]).
    pub(super) fn handle(&self, id: &str) -> Option<ObjectHandle> {
        self.handles.get(id).copied()
    }

    /// A cheap call that fails when the token is gone: token information for the slot, then
    /// a session's state.
    pub(super) fn probe(&self) -> Result<(), String> {
        self.ctx
            .get_token_info(self.slot)
            .map_err(|e| describe(&e))?;
        let session = self.session()?;
        session.get_session_info().map_err(|e| describe(&e))?;
        self.put_back(session);
        Ok(())
    }
}

/// Signs `data` with the key behind `handle`: `CKM_ECDSA` over a digest or `CKM_EDDSA` over a
/// message.
pub(super) fn sign(
    session: &Session,
    algorithm: Algorithm,
    handle: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>, CkError> {
    match algorithm {
        Algorithm::Ed25519 => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            handle,
            data,
        ),
        Algorithm::Secp256k1 | Algorithm::P256 => session.sign(&Mechanism::Ecdsa, handle, data),
    }
}

/// The slot of the configured token, and the token's serial number.
fn find_slot(ctx: &Pkcs11, cfg: &Pkcs11Config) -> Result<(Slot, String), String> {
    let slots = ctx.get_slots_with_token().map_err(|e| describe(&e))?;
    let mut seen = Vec::new();
    let mut matches = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(|e| describe(&e))?;
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        let hit = match (&cfg.token_label, &cfg.token_serial) {
            (Some(l), _) => *l == label,
            (_, Some(s)) => *s == serial,
            _ => false,
        };
        if hit {
            matches.push((slot, serial.clone()));
        }
        seen.push(format!("`{label}` (serial {serial})"));
    }
    let wanted = match (&cfg.token_label, &cfg.token_serial) {
        (Some(l), _) => format!("label `{l}`"),
        (_, Some(s)) => format!("serial `{s}`"),
        _ => "nothing".into(),
    };
    match &matches[..] {
        [found] => Ok(found.clone()),
        [] => Err(format!(
            "no token with {wanted}; tokens present: {}",
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        )),
        _ => Err(format!(
            "{} tokens have {wanted}; select the token by serial instead",
            matches.len()
        )),
    }
}

/// `CKA_LABEL`, `CKA_ID` and `CKA_EC_PARAMS` of an object (missing ones are empty / `None`).
type Names = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn read_names(session: &Session, obj: ObjectHandle) -> Result<Names, String> {
    let attrs = session
        .get_attributes(
            obj,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::EcParams,
            ],
        )
        .map_err(|e| describe(&e))?;
    let (mut label, mut ckid, mut params) = (Vec::new(), Vec::new(), None);
    for a in attrs {
        match a {
            Attribute::Label(v) => label = v,
            Attribute::Id(v) => ckid = v,
            Attribute::EcParams(v) => params = Some(v),
            _ => {}
        }
    }
    Ok((label, ckid, params))
}

/// The public key of the pair: the public key object with the same `CKA_ID` (or, when the
/// pair has no id, the same label), decoded from `CKA_EC_POINT`.
fn read_public(
    session: &Session,
    label: &[u8],
    ckid: &[u8],
    algorithm: Algorithm,
) -> Result<Vec<u8>, String> {
    let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    if ckid.is_empty() {
        template.push(Attribute::Label(label.to_vec()));
    } else {
        template.push(Attribute::Id(ckid.to_vec()));
    }
    let objects = session.find_objects(&template).map_err(|e| describe(&e))?;
    let [obj] = objects[..] else {
        return Err(format!(
            "expected one public key object with the private key's {}, found {} (signerd needs \
             the public key to check every signature)",
            if ckid.is_empty() { "label" } else { "CKA_ID" },
            objects.len()
        ));
    };
    let attrs = session
        .get_attributes(obj, &[AttributeType::EcPoint])
        .map_err(|e| describe(&e))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or("the public key object has no CKA_EC_POINT")?;
    ec::public_key_from_point(algorithm, &point)
}

/// Generates a key pair inside the token: private key with `CKA_TOKEN`, `CKA_PRIVATE`,
/// `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false; both labelled `id` with a random `CKA_ID`.
pub(super) fn generate(conn: &Conn, id: &str, algorithm: Algorithm) -> Result<TokenKey, String> {
    use rand_core::RngCore;
    let session = conn.session()?;
    let taken = session
        .find_objects(&[Attribute::Label(id.as_bytes().to_vec())])
        .map_err(|e| describe(&e))?;
    if !taken.is_empty() {
        return Err(format!(
            "the token already has an object labelled `{id}`; choose another key id"
        ));
    }
    let mut ckid = vec![0u8; 16];
    rand_core::OsRng.fill_bytes(&mut ckid);
    let (mechanism, key_type) = match algorithm {
        Algorithm::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, KeyType::EC_EDWARDS),
        Algorithm::Secp256k1 | Algorithm::P256 => (Mechanism::EccKeyPairGen, KeyType::EC),
    };
    let label = id.as_bytes().to_vec();
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::KeyType(key_type),
        Attribute::EcParams(ec::params_for(algorithm).to_vec()),
        Attribute::Label(label.clone()),
        Attribute::Id(ckid.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::KeyType(key_type),
        Attribute::Label(label.clone()),
        Attribute::Id(ckid.clone()),
    ];
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| format!("key generation failed: {}", describe(&e)))?;
    let public_key = read_public(&session, &label, &ckid, algorithm)?;
    let objects = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(ckid.clone()),
        ])
        .map_err(|e| describe(&e))?;
    let [private] = objects[..] else {
        return Err(format!(
            "expected one private key with the new key's CKA_ID, found {}",
            objects.len()
        ));
    };
    let protection = read_protection(&session, private, &conn.serial, &ckid)?;
    conn.put_back(session);
    Ok(TokenKey {
        info: KeyInfo {
            id: id.to_owned(),
            algorithm,
            backend: super::BACKEND_NAME,
            public_key,
            version: None,
        },
        ckid,
        label,
        protection,
    })
}

/// The protection attributes of private key `obj`: `CKA_SENSITIVE`, `CKA_EXTRACTABLE` and
/// `CKA_NEVER_EXTRACTABLE` (each `None` when the token does not report it).
fn read_protection(
    session: &Session,
    obj: ObjectHandle,
    serial: &str,
    ckid: &[u8],
) -> Result<Protection, String> {
    let attrs = session
        .get_attributes(
            obj,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
            ],
        )
        .map_err(|e| describe(&e))?;
    let (mut sensitive, mut extractable, mut never_extractable) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::Sensitive(v) => sensitive = Some(v),
            Attribute::Extractable(v) => extractable = Some(v),
            Attribute::NeverExtractable(v) => never_extractable = Some(v),
            _ => {}
        }
    }
    Ok(Protection::Token {
        serial: serial.to_owned(),
        ckid: ckid.to_vec(),
        sensitive,
        extractable,
        never_extractable,
    })
}
