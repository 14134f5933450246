//! On-disk record framing of the audit spool.
//!
//! A record is `len: u32 LE | crc32(payload): u32 LE | payload (len bytes)`; the payload is the
//! compact JSON of one [`AccessEvent`](crate::api::AccessEvent). A reader tells apart:
//! - a good record;
//! - a *corrupt* record: the header is plausible and the payload is all there, but the checksum
//!   (or the JSON) is wrong: it is skipped, and reading continues after it;
//! - a *torn* record: the header is cut short, its length is impossible (0 — which is what a
//!   zero-filled tail looks like — or over [`MAX_RECORD`]), or the payload runs past the end of
//!   the file: nothing after it can be trusted, so the file ends there.

use std::io::{self, Read};

/// Bytes of the record header.
pub const HEADER: usize = 8;
/// Largest payload a record may carry (an event is well under 10 KiB: names and paths are
/// capped before they get here).
pub const MAX_RECORD: usize = 64 * 1024;

/// Appends the framed `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_RECORD);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One step of reading a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A record whose checksum matches; `size` is its framed size.
    Good { payload: Vec<u8>, size: u64 },
    /// A complete record whose checksum does not match; `size` bytes were skipped.
    Corrupt { size: u64 },
    /// An unusable tail of `size` bytes (to the end of the file).
    Torn { size: u64 },
    /// Clean end of the file.
    End,
}

/// Reads frames one by one from a segment (or from an offset inside one).
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner }
    }

    /// The next frame. I/O errors other than a short read are returned as errors.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        let mut header = [0u8; HEADER];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(Frame::End);
        }
        if got < HEADER {
            return Ok(Frame::Torn { size: got as u64 });
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            let rest = io::copy(&mut self.inner, &mut io::sink())?;
            return Ok(Frame::Torn {
                size: (HEADER as u64) + rest,
            });
        }
        let mut payload = vec![0u8; len];
        let got = read_full(&mut self.inner, &mut payload)?;
        if got < len {
            return Ok(Frame::Torn {
                size: (HEADER + got) as u64,
            });
        }
        let size = (HEADER + len) as u64;
        if crc32fast::hash(&payload) != crc {
            return Ok(Frame::Corrupt { size });
        }
        Ok(Frame::Good { payload, size })
    }
}

/// Reads until `buf` is full or the end of the input; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut r = FrameReader::new(bytes);
        let mut out = Vec::new();
        loop {
            let f = r.next_frame().unwrap();
            let end = matches!(f, Frame::End | Frame::Torn { .. });
            out.push(f);
            if end {
                return out;
            }
        }
    }

    #[test]
    fn round_trip_and_clean_end() {
        let mut buf = Vec::new();
        encode(b"one", &mut buf);
        encode(b"two!", &mut buf);
        assert_eq!(
            frames(&buf),
            vec![
                Frame::Good {
                    payload: b"one".to_vec(),
                    size: 11
                },
                Frame::Good {
                    payload: b"two!".to_vec(),
                    size: 12
                },
                Frame::End
            ]
        );
    }

    #[test]
    fn short_header_short_payload_and_zero_fill_are_torn() {
        let mut buf = Vec::new();
        encode(b"hello", &mut buf);
        let full = buf.len();
        for cut in 1..full {
            let f = frames(&buf[..cut]);
            assert_eq!(f, vec![Frame::Torn { size: cut as u64 }], "cut at {cut}");
        }
        let zeros = [0u8; 32];
        assert_eq!(frames(&zeros), vec![Frame::Torn { size: 32 }]);
        let mut huge = Vec::new();
        huge.extend_from_slice(&((MAX_RECORD as u32) + 1).to_le_bytes());
        huge.extend_from_slice(&[0u8; 12]);
        assert_eq!(frames(&huge), vec![Frame::Torn { size: 16 }]);
    }

    #[test]
    fn flipped_byte_is_corrupt_and_reading_goes_on() {
        let mut buf = Vec::new();
        encode(b"first", &mut buf);
        let second_at = buf.len();
        encode(b"second", &mut buf);
        encode(b"third", &mut buf);
        buf[second_at + HEADER + 2] ^= 0x40;
        let f = frames(&buf);
        assert_eq!(f[1], Frame::Corrupt { size: 14 });
        assert_eq!(
            f[2],
            Frame::Good {
                payload: b"third".to_vec(),
                size: 13
            }
        );
        assert_eq!(f[3], Frame::End);
    }
}
