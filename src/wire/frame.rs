//! Length-prefixed frames over a byte stream.

use std::io::{self, Read};

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 8;

/// Largest frame accepted unless configured otherwise (16 GiB): large enough for any sane
/// argument, small enough that a corrupted length is caught.
pub(crate) const DEFAULT_LIMIT: u64 = 16 << 30;

/// First allocation for a frame body; it doubles as data arrives, up to the announced length.
const INITIAL_BODY: usize = 64 << 10;

/// What went wrong reading a frame.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The stream ended cleanly between frames.
    Eof,
    /// The stream ended inside a frame (the sizes are for diagnostics and tests).
    #[allow(dead_code)]
    Truncated { expected: u64, got: u64 },
    /// The announced length is over the limit.
    TooLong { len: u64, limit: u64 },
    /// The read would block or its timeout passed; the reader keeps its state.
    WouldBlock,
    /// Any other I/O error.
    Io(io::Error),
}

/// A resumable frame reader: call [`advance`](FrameReader::advance) whenever the stream is
/// readable; it performs exactly one `read` and returns a frame once one is complete.
#[derive(Debug)]
pub(crate) struct FrameReader {
    head: [u8; HEADER],
    head_got: usize,
    body: Vec<u8>,
    body_len: usize,
    limit: u64,
}

impl FrameReader {
    /// A reader refusing frames longer than `limit` bytes.
    pub(crate) fn new(limit: u64) -> FrameReader {
        FrameReader {
            head: [0; HEADER],
            head_got: 0,
            body: Vec::new(),
            body_len: 0,
            limit,
        }
    }

    /// Performs one `read` from `r`. `Ok(Some(frame))` when a frame completed, `Ok(None)` when
    /// more bytes are needed.
    pub(crate) fn advance(&mut self, r: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
        if self.head_got < HEADER {
            let n = read_once(r, &mut self.head[self.head_got..])?;
            if n == 0 {
                return Err(self.eof());
            }
            self.head_got += n;
            if self.head_got < HEADER {
                return Ok(None);
            }
            let len = u64::from_le_bytes(self.head);
            if len > self.limit {
                return Err(FrameError::TooLong {
                    len,
                    limit: self.limit,
                });
            }
            // Checked above against a limit that a caller sets within usize on 64-bit targets.
            self.body_len = usize::try_from(len).map_err(|_| FrameError::TooLong {
                len,
                limit: self.limit,
            })?;
            self.body = Vec::with_capacity(self.body_len.min(INITIAL_BODY));
            if self.body_len == 0 {
                return Ok(Some(self.take()));
            }
            return Ok(None);
        }
        if self.body.len() == self.body.capacity() {
            // Grow geometrically, never past the announced length.
            let want = (self.body.capacity() * 2).clamp(INITIAL_BODY, self.body_len);
            self.body.reserve_exact(want - self.body.len());
        }
        let room = (self.body.capacity() - self.body.len()).min(self.body_len - self.body.len());
        let start = self.body.len();
        self.body.resize(start + room, 0);
        let n = match read_once(r, &mut self.body[start..]) {
            Ok(n) => n,
            Err(e) => {
                self.body.truncate(start);
                return Err(e);
            }
        };
        self.body.truncate(start + n);
        if n == 0 {
            return Err(self.eof());
        }
        if self.body.len() == self.body_len {
            Ok(Some(self.take()))
        } else {
            Ok(None)
        }
    }

    /// Reads one whole frame, blocking as the stream does.
    pub(crate) fn read_frame(&mut self, r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
        loop {
            if let Some(frame) = self.advance(r)? {
                return Ok(frame);
            }
        }
    }

    fn take(&mut self) -> Vec<u8> {
        self.head_got = 0;
        self.body_len = 0;
        std::mem::take(&mut self.body)
    }

    fn eof(&self) -> FrameError {
        if self.head_got == 0 {
            FrameError::Eof
        } else {
            let got = if self.head_got < HEADER {
                self.head_got
            } else {
                HEADER + self.body.len()
            };
            let expected = if self.head_got < HEADER {
                HEADER as u64
            } else {
                HEADER as u64 + self.body_len as u64
            };
            FrameError::Truncated {
                expected,
                got: got as u64,
            }
        }
    }
}

fn read_once(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, FrameError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(FrameError::WouldBlock);
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// A frame being built: a header placeholder followed by the body. Encode the body straight
/// into [`buf`](FrameBuf::buf) (no second copy), then [`finish`](FrameBuf::finish).
pub(crate) struct FrameBuf {
    pub(crate) buf: Vec<u8>,
}

impl FrameBuf {
    /// An empty frame.
    pub(crate) fn new() -> FrameBuf {
        FrameBuf::with_capacity(64)
    }

    /// An empty frame with room for `n` body bytes.
    pub(crate) fn with_capacity(n: usize) -> FrameBuf {
        let mut buf = Vec::with_capacity(HEADER + n);
        buf.extend_from_slice(&[0; HEADER]);
        FrameBuf { buf }
    }

    /// Writes the length into the header and returns the bytes to send.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - HEADER) as u64;
        self.buf[..HEADER].copy_from_slice(&len.to_le_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.buf.extend_from_slice(body);
        f.finish()
    }

    #[test]
    fn round_trip_across_chunks() {
        let mut bytes = frame(b"hello");
        bytes.extend(frame(&vec![7u8; 300_000]));
        bytes.extend(frame(b""));
        let mut r = FrameReader::new(DEFAULT_LIMIT);
        let mut src = &bytes[..];
        assert_eq!(r.read_frame(&mut src).unwrap(), b"hello");
        assert_eq!(r.read_frame(&mut src).unwrap(), vec![7u8; 300_000]);
        assert_eq!(r.read_frame(&mut src).unwrap(), b"");
        assert!(matches!(r.read_frame(&mut src), Err(FrameError::Eof)));
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let bytes = u64::MAX.to_le_bytes();
        let mut r = FrameReader::new(1 << 20);
        assert!(matches!(
            r.read_frame(&mut &bytes[..]),
            Err(FrameError::TooLong { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn lying_length_allocates_only_what_arrives() {
        let mut bytes = (1u64 << 33).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut r = FrameReader::new(DEFAULT_LIMIT);
        let err = r.read_frame(&mut &bytes[..]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { got: 11, .. }),
            "{err:?}"
        );
        assert!(r.body.capacity() <= INITIAL_BODY);
    }

    #[test]
    fn truncated_header_is_reported() {
        let bytes = [5u8, 0, 0];
        let mut r = FrameReader::new(DEFAULT_LIMIT);
        assert!(matches!(
            r.read_frame(&mut &bytes[..]),
            Err(FrameError::Truncated {
                expected: 8,
                got: 3
            })
        ));
    }
}
