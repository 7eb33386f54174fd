//! Undoing `Content-Encoding` (gzip, deflate, br) so bodies are compared, and
//! exported, as the client reads them. Decoding is bounded: a small body that
//! inflates past the limit (a zip bomb) is an error, not an allocation.

use std::borrow::Cow;
use std::io::Read;

/// A content coding this module undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// zlib-wrapped deflate (RFC 9110); raw deflate streams, which some servers send, too.
    Deflate,
    Brotli,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding this module does not know (zstd, compress, ...).
    #[error("content coding {0:?} is not supported (gzip, deflate and br are)")]
    Unsupported(String),
    /// The bytes are not valid for the coding.
    #[error("{coding} body does not decode: {detail}")]
    Corrupt { coding: &'static str, detail: String },
    /// The decoded body would be larger than the limit.
    #[error("{coding} body decodes to more than {limit} bytes")]
    TooLarge { coding: &'static str, limit: usize },
}

/// The codings named by a `Content-Encoding` value, in the order they were applied
/// (`identity` dropped).
pub fn codings(content_encoding: &str) -> Result<Vec<Coding>, DecodeError> {
    content_encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .map(|c| match c.as_str() {
            "gzip" | "x-gzip" => Ok(Coding::Gzip),
            "deflate" => Ok(Coding::Deflate),
            "br" => Ok(Coding::Brotli),
            _ => Err(DecodeError::Unsupported(c)),
        })
        .collect()
}

/// `body` with the codings of `content_encoding` undone (last applied, first undone),
/// at most `limit` bytes. Without a coding the body is returned as is.
pub fn decode<'a>(content_encoding: Option<&str>, body: &'a [u8], limit: usize) -> Result<Cow<'a, [u8]>, DecodeError> {
    let codings = match content_encoding {
        Some(value) => codings(value)?,
        None => Vec::new(),
    };
    let mut out = Cow::Borrowed(body);
    for coding in codings.into_iter().rev() {
        out = Cow::Owned(decode_one(coding, &out, limit)?);
    }
    Ok(out)
}

fn decode_one(coding: Coding, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        Coding::Gzip => read_bounded(coding, flate2::read::MultiGzDecoder::new(body), limit),
        Coding::Deflate => read_bounded(coding, flate2::read::ZlibDecoder::new(body), limit).or_else(|zlib_error| {
            // Raw deflate without the zlib wrapper, as some servers send it.
            read_bounded(coding, flate2::read::DeflateDecoder::new(body), limit).map_err(|_| zlib_error)
        }),
        Coding::Brotli => read_bounded(coding, brotli_decompressor::Decompressor::new(body, 64 * 1024), limit),
    }
}

/// Reads a decoder to its end, failing past `limit` bytes.
fn read_bounded(coding: Coding, reader: impl Read, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Err(e) => Err(DecodeError::Corrupt { coding: coding.name(), detail: e.to_string() }),
        Ok(n) if n > limit => Err(DecodeError::TooLarge { coding: coding.name(), limit }),
        Ok(_) => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::BrotliCompress(&mut &data[..], &mut out, &Default::default()).unwrap();
        out
    }

    #[test]
    fn gzip_deflate_and_brotli_decode() {
        let text = b"{\"a\":1,\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";
        assert_eq!(&*decode(Some("gzip"), &gzip(text), 1 << 20).unwrap(), text);
        assert_eq!(&*decode(Some("x-gzip"), &gzip(text), 1 << 20).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(&*decode(Some("deflate"), &z.finish().unwrap(), 1 << 20).unwrap(), text);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(text).unwrap();
        assert_eq!(&*decode(Some("deflate"), &raw.finish().unwrap(), 1 << 20).unwrap(), text, "raw deflate too");
        assert_eq!(&*decode(Some("br"), &brotli(text), 1 << 20).unwrap(), text);
        // Two codings: applied gzip then br, undone br then gzip.
        assert_eq!(&*decode(Some("gzip, br"), &brotli(&gzip(text)), 1 << 20).unwrap(), text);
        assert!(matches!(decode(None, text, 1).unwrap(), Cow::Borrowed(_)), "no coding: the body as is, whatever its size");
        assert!(matches!(decode(Some("identity"), text, 1).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn bad_bodies_unknown_codings_and_bombs_are_errors() {
        assert!(matches!(decode(Some("gzip"), b"not gzip", 1 << 20), Err(DecodeError::Corrupt { coding: "gzip", .. })));
        assert!(matches!(decode(Some("br"), b"\xff\xff\xff not brotli", 1 << 20), Err(DecodeError::Corrupt { coding: "br", .. })));
        assert_eq!(decode(Some("zstd"), b"x", 1 << 20), Err(DecodeError::Unsupported("zstd".into())));
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(decode(Some("gzip"), &bomb, 1 << 20), Err(DecodeError::TooLarge { coding: "gzip", limit: 1 << 20 }));
        // A gzip body cut short does not decode.
        let whole = gzip(&[7u8; 5000]);
        assert!(decode(Some("gzip"), &whole[..whole.len() / 2], 1 << 20).is_err());
    }
}
