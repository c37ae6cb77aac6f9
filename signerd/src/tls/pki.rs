//! A small certificate authority for development and tests: the `signerd dev` PKI, and the
//! certificates black-box tests need (other CAs, expired and revoked clients, CRLs).
//!
//! Production deployments bring their own PKI; nothing here is used by `signerd run`.
//! Keys are ECDSA P-256, generated with `rcgen` on `ring`.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Serial number, big-endian.
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &hex::encode(&self.serial))
            .finish_non_exhaustive()
    }
}

/// What kind of client certificate to issue.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// A URI subject alternative name (for example a SPIFFE id).
    pub san_uri: Option<String>,
    /// Issue a certificate whose validity ended in the past.
    pub expired: bool,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

fn serial() -> Result<SerialNumber, rcgen::Error> {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero, so the encoding round-trips
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, expired: bool) {
    let now = OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - Duration::days(30);
        params.not_after = now - Duration::days(1);
    } else {
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
    }
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn generate(name: &str) -> Result<DevCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        params.key_identifier_method = KeyIdMethod::Sha256;
        validity(&mut params, false);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let sans: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("signerd"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, false)
    }

    /// A client certificate with subject CN `cn`.
    pub fn issue_client(&self, cn: &str, opts: &ClientOptions) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = &opts.san_uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, opts.expired)
    }

    fn issue(&self, mut params: CertificateParams, expired: bool) -> Result<Issued, rcgen::Error> {
        let serial = serial()?;
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, expired);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL, PEM, revoking the given serial numbers.
    pub fn crl(&self, revoked: &[&[u8]]) -> Result<String, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: serial()?,
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(5),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}
