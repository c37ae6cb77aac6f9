//! Ethereum keystore v3 files ([Web3 Secret Storage Definition]): parsed strictly, their KDF
//! parameters bounded, and decrypted in memory (scrypt or PBKDF2-HMAC-SHA256, a Keccak-256 MAC,
//! AES-128-CTR).
//!
//! The file is untrusted input: this module must never run a KDF before every parameter has
//! been checked against the bounds below, decrypt before the MAC has been checked (in constant
//! time), or put the password, the derived key or the private key in an error. The derived key
//! and the plaintext live in [`Zeroizing`] buffers. scrypt's working memory is allocated and
//! freed inside the `scrypt` crate, which does not zeroize it; it holds password-derived
//! intermediate values, never the derived key itself.
//!
//! scrypt files with `r = 1` (web3.py and older eth-account, and the specification's own
//! scrypt test vector, use `n = 2^18, r = 1, p = 8`) are accepted: RFC 7914's `n < 2^(16·r)`
//! is an erratum (RFC errata 5971) that the `scrypt` crate no longer enforces.
//!
//! [Web3 Secret Storage Definition]: https://ethereum.org/en/developers/docs/data-structures-and-encoding/web3-secret-storage/

use aes::cipher::{KeyIvInit, StreamCipher};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest scrypt memory a file may ask for, `128·r·(n + p)` bytes: 257 MiB, so that geth's
/// standard parameters (`n = 2^18, r = 8, p = 1`: 256 MiB and 1 KiB) fit.
pub(crate) const MAX_SCRYPT_MEMORY: u64 = 257 << 20;
/// Largest scrypt work, `n·r·p`, a file may ask for: 8 times geth's standard cost (a few
/// seconds).
pub(crate) const MAX_SCRYPT_WORK: u64 = 1 << 24;
/// Largest PBKDF2 iteration count a file may ask for.
pub(crate) const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// The only derived-key length the format uses: 16 bytes of AES key, 16 bytes of MAC key.
const DKLEN: u64 = 32;

/// A derived key: the AES-128 key, then the MAC key.
pub(crate) type DerivedKey = [[u8; 16]; 2];

/// Why a keystore v3 file was refused. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum V3Error {
    /// Not JSON, or not the v3 document's shape (a missing field, a wrong type, an unknown
    /// field inside `crypto`).
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// `version` other than 3.
    #[error("version is {0}; expected 3")]
    Version(u64),
    /// A cipher other than AES-128-CTR.
    #[error("cipher is {0:?}; expected \"aes-128-ctr\"")]
    Cipher(String),
    /// A KDF other than scrypt or PBKDF2.
    #[error("kdf is {0:?}; expected \"scrypt\" or \"pbkdf2\"")]
    Kdf(String),
    /// `kdfparams` does not have the named KDF's fields (missing, unknown, wrong type).
    #[error("kdfparams of {kdf}: {source}")]
    KdfParams {
        /// `scrypt` or `pbkdf2`.
        kdf: &'static str,
        /// What serde found wrong.
        source: serde_json::Error,
    },
    /// A hex field that is not hex.
    #[error("{field} is not hex: {reason}")]
    NotHex {
        /// The field's path in the document.
        field: &'static str,
        /// Why it did not decode.
        reason: String,
    },
    /// A hex field of the wrong length.
    #[error("{field} is {actual} bytes; expected {expected}")]
    Length {
        /// The field's path in the document.
        field: &'static str,
        /// Its length.
        actual: usize,
        /// The length the format requires.
        expected: usize,
    },
    /// An empty salt.
    #[error("kdfparams.salt is empty")]
    EmptySalt,
    /// `dklen` other than 32.
    #[error("kdfparams.dklen is {0}; it must be 32")]
    Dklen(u64),
    /// scrypt `n` not a power of two of at least 2.
    #[error("kdfparams.n is {0}; it must be a power of two >= 2")]
    ScryptN(u64),
    /// An integer parameter outside its range.
    #[error("kdfparams.{field} is {value}; it must be within {min}..={max}")]
    OutOfRange {
        /// The parameter's name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// scrypt parameters asking for too much memory.
    #[error(
        "scrypt would use {0} bytes of memory (128*r*(n+p)); at most {MAX_SCRYPT_MEMORY} are \
         allowed"
    )]
    ScryptMemory(u64),
    /// scrypt parameters asking for too much work.
    #[error("scrypt cost n*r*p is {0}; at most {MAX_SCRYPT_WORK} is allowed")]
    ScryptWork(u64),
    /// A PBKDF2 pseudo-random function other than HMAC-SHA256.
    #[error("kdfparams.prf is {0:?}; expected \"hmac-sha256\"")]
    Prf(String),
    /// The `scrypt` crate refused parameters these checks let through (not expected).
    #[error("scrypt refused n=2^{log_n}, r={r}, p={p}")]
    ScryptParams {
        /// log2 of `n`.
        log_n: u8,
        /// `r`.
        r: u32,
        /// `p`.
        p: u32,
    },
    /// The MAC does not match: a wrong password, or a modified file.
    #[error("cannot decrypt: wrong password or corrupted file")]
    MacMismatch,
}

/// The document as written. Fields outside `crypto` other than these (`id`, and the `name`,
/// `meta` or tool-specific fields some wallets add) play no part in decryption and are
/// ignored; inside `crypto`, unknown fields are errors.
#[derive(Deserialize)]
struct Document {
    version: u64,
    // MyEtherWallet and others write `Crypto`.
    #[serde(alias = "Crypto")]
    crypto: CryptoJson,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CryptoJson {
    cipher: String,
    cipherparams: CipherParamsJson,
    ciphertext: String,
    kdf: String,
    kdfparams: serde_json::Value,
    mac: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherParamsJson {
    iv: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptJson {
    dklen: u64,
    n: u64,
    r: u64,
    p: u64,
    salt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pbkdf2Json {
    dklen: u64,
    c: u64,
    prf: String,
    salt: String,
}

/// A key-derivation function with parameters within the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kdf {
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
    },
    Pbkdf2HmacSha256 {
        iterations: u32,
        salt: Vec<u8>,
    },
}

/// A parsed keystore v3 file whose parameters are all within bounds: deriving its key costs
/// at most the bounds above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keystore {
    kdf: Kdf,
    iv: [u8; 16],
    ciphertext: [u8; 32],
    mac: [u8; 32],
    address: Option<[u8; 20]>,
}

fn decode_hex(field: &'static str, value: &str) -> Result<Vec<u8>, V3Error> {
    hex::decode(value).map_err(|e| V3Error::NotHex {
        field,
        reason: e.to_string(),
    })
}

fn decode_hex_array<const N: usize>(field: &'static str, value: &str) -> Result<[u8; N], V3Error> {
    let bytes = decode_hex(field, value)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| V3Error::Length {
        field,
        actual: bytes.len(),
        expected: N,
    })
}

fn decode_salt(value: &str) -> Result<Vec<u8>, V3Error> {
    let salt = decode_hex("kdfparams.salt", value)?;
    if salt.is_empty() {
        return Err(V3Error::EmptySalt);
    }
    Ok(salt)
}

fn check_dklen(dklen: u64) -> Result<(), V3Error> {
    if dklen == DKLEN {
        Ok(())
    } else {
        Err(V3Error::Dklen(dklen))
    }
}

fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<u32, V3Error> {
    if (min..=max).contains(&value) {
        u32::try_from(value).map_err(|_| V3Error::OutOfRange {
            field,
            value,
            min,
            max,
        })
    } else {
        Err(V3Error::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

impl Kdf {
    fn parse(name: &str, params: serde_json::Value) -> Result<Kdf, V3Error> {
        match name {
            "scrypt" => {
                let p: ScryptJson =
                    serde_json::from_value(params).map_err(|source| V3Error::KdfParams {
                        kdf: "scrypt",
                        source,
                    })?;
                check_dklen(p.dklen)?;
                if p.n < 2 || !p.n.is_power_of_two() {
                    return Err(V3Error::ScryptN(p.n));
                }
                let r = in_range("r", p.r, 1, u64::from(u32::MAX))?;
                let pp = in_range("p", p.p, 1, u64::from(u32::MAX))?;
                let memory = 128u64
                    .saturating_mul(p.r)
                    .saturating_mul(p.n.saturating_add(p.p));
                if memory > MAX_SCRYPT_MEMORY {
                    return Err(V3Error::ScryptMemory(memory));
                }
                let work = p.n.saturating_mul(p.r).saturating_mul(p.p);
                if work > MAX_SCRYPT_WORK {
                    return Err(V3Error::ScryptWork(work));
                }
                let log_n =
                    u8::try_from(p.n.trailing_zeros()).map_err(|_| V3Error::ScryptN(p.n))?;
                Ok(Kdf::Scrypt {
                    log_n,
                    r,
                    p: pp,
                    salt: decode_salt(&p.salt)?,
                })
            }
            "pbkdf2" => {
                let p: Pbkdf2Json =
                    serde_json::from_value(params).map_err(|source| V3Error::KdfParams {
                        kdf: "pbkdf2",
                        source,
                    })?;
                check_dklen(p.dklen)?;
                let iterations = in_range("c", p.c, 1, u64::from(MAX_PBKDF2_ITERATIONS))?;
                if p.prf != "hmac-sha256" {
                    return Err(V3Error::Prf(p.prf));
                }
                Ok(Kdf::Pbkdf2HmacSha256 {
                    iterations,
                    salt: decode_salt(&p.salt)?,
                })
            }
            other => Err(V3Error::Kdf(other.to_owned())),
        }
    }

    /// Derives the 32-byte key from the password. The cost is bounded by [`Kdf::parse`].
    fn derive(&self, password: &[u8]) -> Result<Zeroizing<DerivedKey>, V3Error> {
        let mut key = Zeroizing::new([[0u8; 16]; 2]);
        match self {
            Kdf::Scrypt { log_n, r, p, salt } => {
                let params =
                    scrypt::Params::new(*log_n, *r, *p).map_err(|_| V3Error::ScryptParams {
                        log_n: *log_n,
                        r: *r,
                        p: *p,
                    })?;
                // The output is never empty, the only error `scrypt` returns for it.
                scrypt::scrypt(password, salt, &params, key.as_flattened_mut()).map_err(|_| {
                    V3Error::ScryptParams {
                        log_n: *log_n,
                        r: *r,
                        p: *p,
                    }
                })?;
            }
            Kdf::Pbkdf2HmacSha256 { iterations, salt } => {
                pbkdf2::pbkdf2_hmac::<pbkdf2::sha2::Sha256>(
                    password,
                    salt,
                    *iterations,
                    key.as_flattened_mut(),
                );
            }
        }
        Ok(key)
    }
}

impl Keystore {
    /// Parses a keystore v3 file and checks every parameter against the bounds, running no
    /// KDF.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Keystore, V3Error> {
        let doc: Document = serde_json::from_slice(bytes).map_err(V3Error::Json)?;
        if doc.version != 3 {
            return Err(V3Error::Version(doc.version));
        }
        let c = doc.crypto;
        if c.cipher != "aes-128-ctr" {
            return Err(V3Error::Cipher(c.cipher));
        }
        let kdf = Kdf::parse(&c.kdf, c.kdfparams)?;
        let iv = decode_hex_array("crypto.cipherparams.iv", &c.cipherparams.iv)?;
        let ciphertext = decode_hex_array("crypto.ciphertext", &c.ciphertext)?;
        let mac = decode_hex_array("crypto.mac", &c.mac)?;
        let address = doc
            .address
            .map(|a| {
                let digits = a.strip_prefix("0x").unwrap_or(&a);
                decode_hex_array("address", digits)
            })
            .transpose()?;
        Ok(Keystore {
            kdf,
            iv,
            ciphertext,
            mac,
            address,
        })
    }

    /// The 20-byte `address` field, if the file has one. Nothing checks it against the key
    /// here: the caller compares it with the decrypted key's address.
    pub(crate) fn address(&self) -> Option<[u8; 20]> {
        self.address
    }

    /// Derives the key from `password`, checks the MAC and decrypts the 32-byte private key.
    pub(crate) fn decrypt(&self, password: &[u8]) -> Result<Zeroizing<[u8; 32]>, V3Error> {
        let derived = self.kdf.derive(password)?;
        self.decrypt_with_derived_key(&derived)
    }

    /// Checks the MAC, `keccak256(derived[16..32] || ciphertext)`, in constant time, then
    /// decrypts the ciphertext with AES-128-CTR under `derived[..16]`.
    pub(crate) fn decrypt_with_derived_key(
        &self,
        derived: &DerivedKey,
    ) -> Result<Zeroizing<[u8; 32]>, V3Error> {
        let [aes_key, mac_key] = derived;
        // Hashed incrementally so the MAC key is not copied into a second buffer.
        let mut hasher = alloy_primitives::Keccak256::new();
        hasher.update(mac_key);
        hasher.update(self.ciphertext);
        let mac = hasher.finalize();
        if !bool::from(mac.as_slice().ct_eq(&self.mac)) {
            return Err(V3Error::MacMismatch);
        }
        let mut plaintext = Zeroizing::new(self.ciphertext);
        // The cipher zeroizes its key schedule when dropped (the crates' `zeroize` feature).
        let mut cipher = ctr::Ctr128BE::<aes::Aes128>::new(aes_key.into(), (&self.iv).into());
        cipher.apply_keystream(&mut plaintext[..]);
        Ok(plaintext)
    }
}

#[cfg(test)]
pub(super) mod tests;
