//! The HTTP/2 client connection preface (RFC 9113, section 3.4), read by signerd itself under
//! a deadline before a connection reaches the HTTP/2 server: the 24 octets
//! `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` followed by a SETTINGS frame (section 6.5).
//!
//! A client that sends nothing, or only part of it, after its TLS handshake would otherwise
//! hold a connection slot for as long as it likes. What is read here is handed on unchanged
//! (see [`super::TlsConn`]); this module never trusts a length beyond
//! [`MAX_SETTINGS_PAYLOAD`]. It answers a client only to refuse its connection ([`refusal`]).

use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of the client preface.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
/// The SETTINGS frame type.
const SETTINGS: u8 = 0x4;
/// The ACK flag of a SETTINGS frame.
const ACK: u8 = 0x1;
/// The GOAWAY frame type.
const GOAWAY: u8 = 0x7;
/// The HTTP/2 error code ENHANCE_YOUR_CALM (RFC 9113, section 7): gRPC clients report a
/// connection refused with it as `RESOURCE_EXHAUSTED`.
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// Most octets of the reason carried in a refusal's GOAWAY.
const MAX_REFUSAL_REASON: usize = 256;
/// Largest SETTINGS payload accepted: the smallest maximum frame size a peer must accept
/// (`SETTINGS_MAX_FRAME_SIZE`'s initial value, 2^14 octets).
pub const MAX_SETTINGS_PAYLOAD: usize = 1 << 14;

/// Why a connection did not start with an HTTP/2 client preface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefaceError {
    /// Reading failed, or the client closed the connection first.
    #[error("reading the HTTP/2 client preface: {0}")]
    Io(#[from] std::io::Error),
    /// The first 24 octets are not the preface.
    #[error("the connection does not start with the HTTP/2 client preface")]
    NotHttp2,
    /// The preface is not followed by a SETTINGS frame on stream 0 without ACK.
    #[error("the HTTP/2 client preface is not followed by a SETTINGS frame")]
    NoSettings,
    /// The SETTINGS payload is not a whole number of settings, or is too large.
    #[error("the first SETTINGS frame has a payload of {0} octets")]
    BadSettings(usize),
}

/// What a connection refused after its TLS handshake (over a connection cap) is sent before it
/// is closed: the server's connection preface (an empty SETTINGS frame) and a GOAWAY that
/// accepts no stream, with ENHANCE_YOUR_CALM and `reason` (cut to 256 octets) as its debug
/// data.
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REFUSAL_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let debug = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(2 * FRAME_HEADER + 8 + debug.len());
    out.extend_from_slice(&frame_header(0, SETTINGS, 0));
    out.extend_from_slice(&frame_header(8 + debug.len(), GOAWAY, 0));
    // Last stream id 0: no stream was or will be processed.
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    out.extend_from_slice(debug);
    out
}

/// A frame header on stream 0 (`length` fits: callers bound it far below 2^24).
fn frame_header(length: usize, ty: u8, flags: u8) -> [u8; FRAME_HEADER] {
    let len = u32::try_from(length).unwrap_or(0).to_be_bytes();
    [len[1], len[2], len[3], ty, flags, 0, 0, 0, 0]
}

/// Reads the client preface and its SETTINGS frame, and returns every octet read, to be
/// handed on. The caller bounds the time it may take.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, PrefaceError> {
    let mut buf = vec![0u8; PREFACE.len() + FRAME_HEADER];
    r.read_exact(&mut buf).await?;
    if buf[..PREFACE.len()] != PREFACE[..] {
        return Err(PrefaceError::NotHttp2);
    }
    let header = &buf[PREFACE.len()..];
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if header[3] != SETTINGS || header[4] & ACK != 0 || stream != 0 {
        return Err(PrefaceError::NoSettings);
    }
    if length % 6 != 0 || length > MAX_SETTINGS_PAYLOAD {
        return Err(PrefaceError::BadSettings(length));
    }
    let start = buf.len();
    buf.resize(start + length, 0);
    r.read_exact(&mut buf[start..]).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(length: usize, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend_from_slice(&u32::try_from(length).unwrap().to_be_bytes()[1..]);
        v.push(ty);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend(std::iter::repeat_n(0u8, length));
        v
    }

    async fn read_all(bytes: &[u8]) -> Result<Vec<u8>, PrefaceError> {
        let mut r = bytes;
        read(&mut r).await
    }

    #[tokio::test]
    async fn a_preface_with_settings_is_read_whole_and_nothing_more() {
        let good = settings(12, SETTINGS, 0, 0);
        let mut more = good.clone();
        more.extend_from_slice(b"next frame");
        let mut r = &more[..];
        assert_eq!(read(&mut r).await.unwrap(), good);
        assert_eq!(r, b"next frame");
        assert_eq!(
            read_all(&settings(0, SETTINGS, 0, 0)).await.unwrap().len(),
            33
        );
    }

    #[test]
    fn a_refusal_is_settings_then_goaway_with_its_reason() {
        let out = refusal("too many");
        assert_eq!(&out[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&out[9..18], &[0, 0, 16, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&out[18..22], &[0, 0, 0, 0]);
        assert_eq!(&out[22..26], &[0, 0, 0, 0xb]);
        assert_eq!(&out[26..], b"too many");
        let long = "é".repeat(200);
        let out = refusal(&long);
        assert_eq!(out.len(), 26 + 256);
        assert!(std::str::from_utf8(&out[26..]).is_ok());
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        // Only the 24 octets, or half a frame header: the client closed before finishing.
        assert!(matches!(read_all(PREFACE).await, Err(PrefaceError::Io(_))));
        let good = settings(12, SETTINGS, 0, 0);
        assert!(matches!(
            read_all(&good[..40]).await,
            Err(PrefaceError::Io(_))
        ));
        let mut http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        http1.resize(33, b' ');
        assert!(matches!(
            read_all(&http1).await,
            Err(PrefaceError::NotHttp2)
        ));
        // A PING, a SETTINGS ACK, a SETTINGS frame on a stream.
        assert!(matches!(
            read_all(&settings(8, 0x6, 0, 0)).await,
            Err(PrefaceError::NoSettings)
        ));
        assert!(matches!(
            read_all(&settings(0, SETTINGS, ACK, 0)).await,
            Err(PrefaceError::NoSettings)
        ));
        assert!(matches!(
            read_all(&settings(6, SETTINGS, 0, 1)).await,
            Err(PrefaceError::NoSettings)
        ));
        assert!(matches!(
            read_all(&settings(7, SETTINGS, 0, 0)).await,
            Err(PrefaceError::BadSettings(7))
        ));
        // A length beyond the bound is refused before anything of the payload is read.
        let mut huge = settings(0, SETTINGS, 0, 0);
        huge[24..27].copy_from_slice(&[0xff, 0xff, 0xfa]);
        assert!(matches!(
            read_all(&huge).await,
            Err(PrefaceError::BadSettings(0xff_fffa))
        ));
    }
}
