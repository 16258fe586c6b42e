//! Finds the end of one RESP2 reply in a buffer without building it, and says whether it (or,
//! for an `EXEC` array, any element) is an error. Replay only needs that much of each reply.

/// What one reply was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplySummary {
    /// Bytes the reply occupies.
    pub len: usize,
    /// Error lines in the reply (top level, or elements of a top-level array), without `-`.
    pub errors: Vec<String>,
}

/// The buffer does not hold a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error at byte {0}")]
pub struct ProtocolError(pub usize);

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let nl = memchr::memchr(b'\n', &buf[from..])? + from;
    Some(nl)
}

fn int(buf: &[u8], at: usize, end: usize) -> Result<i64, ProtocolError> {
    std::str::from_utf8(&buf[at..end.saturating_sub(1).max(at)])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError(at))
}

/// Parses one reply at `at`; `Ok(None)` when more bytes are needed.
fn skip(
    buf: &[u8],
    at: usize,
    depth: u32,
    errors: &mut Vec<String>,
) -> Result<Option<usize>, ProtocolError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(nl) = line_end(buf, at) else {
        return Ok(None);
    };
    match kind {
        b'+' | b':' => Ok(Some(nl + 1)),
        b'-' => {
            if depth <= 1 {
                let end = nl.saturating_sub(1).max(at + 1);
                errors.push(String::from_utf8_lossy(&buf[at + 1..end]).into_owned());
            }
            Ok(Some(nl + 1))
        }
        b'$' => {
            let n = int(buf, at + 1, nl)?;
            if n < 0 {
                return Ok(Some(nl + 1));
            }
            let end = nl + 1 + n as usize + 2;
            Ok((end <= buf.len()).then_some(end))
        }
        b'*' => {
            let n = int(buf, at + 1, nl)?;
            let mut pos = nl + 1;
            for _ in 0..n.max(0) {
                match skip(buf, pos, depth + 1, errors)? {
                    Some(p) => pos = p,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err(ProtocolError(at)),
    }
}

/// Summarises the reply at the start of `buf`; `Ok(None)` when it is not complete yet.
pub fn summarize(buf: &[u8]) -> Result<Option<ReplySummary>, ProtocolError> {
    let mut errors = Vec::new();
    Ok(skip(buf, 0, 0, &mut errors)?.map(|len| ReplySummary { len, errors }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_replies() {
        assert_eq!(summarize(b"+OK\r\n").unwrap().unwrap().len, 5);
        assert_eq!(summarize(b"+OK\r").unwrap(), None);
        assert_eq!(summarize(b"$3\r\nab").unwrap(), None);
        assert_eq!(summarize(b"$3\r\nabc\r\n+").unwrap().unwrap().len, 9);
        assert_eq!(summarize(b"$-1\r\n").unwrap().unwrap().len, 5);
        let r = summarize(b"*3\r\n+OK\r\n-WRONGTYPE bad\r\n*1\r\n-ERR deep\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.errors, vec!["WRONGTYPE bad".to_string()]);
        let r = summarize(b"-ERR x\r\n").unwrap().unwrap();
        assert_eq!(r.errors, vec!["ERR x".to_string()]);
        assert!(summarize(b"?\r\n").is_err());
        assert_eq!(summarize(b"*2\r\n:1\r\n").unwrap(), None);
    }
}
