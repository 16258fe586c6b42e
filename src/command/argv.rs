//! `Argv`: one command's arguments as raw bytes, packed in a single buffer.
//!
//! Keys are binary, so arguments are never strings. Packing every argument into one buffer with an
//! index of ends keeps a parsed line at two allocations, and a reused `Argv` at none.

use std::fmt;

use crate::escape::quote_into;

/// A command's arguments; `argv[0]` is the command name.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Argv {
    buf: Vec<u8>,
    ends: Vec<u32>,
}

impl Argv {
    /// An empty argv.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an argv from anything that yields byte slices.
    pub fn from_args<I, A>(args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let mut argv = Argv::new();
        for a in args {
            argv.push(a.as_ref());
        }
        argv
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there is not even a command name.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Appends one argument.
    pub fn push(&mut self, arg: &[u8]) {
        self.buf.extend_from_slice(arg);
        self.ends.push(self.buf.len() as u32);
    }

    /// Removes every argument but keeps the allocations, for reuse on the hot path.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// The argument at `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.buf[start..end])
    }

    /// The command name (`argv[0]`), or an empty slice for an empty argv.
    pub fn name(&self) -> &[u8] {
        self.get(0).unwrap_or_default()
    }

    /// Iterates over the arguments in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or_default())
    }

    /// Total bytes of all arguments.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// Replaces argument `i` with `arg`, shifting later arguments. Used by rewrites, off the parse
    /// path.
    pub fn set(&mut self, i: usize, arg: &[u8]) {
        let Some(&end) = self.ends.get(i) else { return };
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let end = end as usize;
        self.buf.splice(start..end, arg.iter().copied());
        let delta = arg.len() as i64 - (end - start) as i64;
        for e in &mut self.ends[i..] {
            *e = (*e as i64 + delta) as u32;
        }
    }

    /// Upper-cases the command name in place, so table lookups need no allocation.
    pub fn uppercase_name(&mut self) {
        let end = self.ends.first().copied().unwrap_or(0) as usize;
        self.buf[..end].make_ascii_uppercase();
    }

    /// Starts an argument whose bytes the caller appends with [`Argv::buf_mut`].
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Ends the argument begun by writing to [`Argv::buf_mut`].
    pub(crate) fn finish_arg(&mut self) {
        self.ends.push(self.buf.len() as u32);
    }

    /// The arguments quoted as `MONITOR` prints them: `"SET" "k" "v"`.
    pub fn quoted(&self) -> String {
        let mut out = Vec::with_capacity(self.buf.len() + 3 * self.len());
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            quote_into(&mut out, a);
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl fmt::Debug for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Argv[{}]", self.quoted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_get_set() {
        let mut a = Argv::from_args(["set", "k", "value"]);
        assert_eq!(a.len(), 3);
        a.uppercase_name();
        assert_eq!(a.name(), b"SET");
        a.set(1, b"longer-key");
        assert_eq!(a.get(1).unwrap(), b"longer-key");
        assert_eq!(a.get(2).unwrap(), b"value");
        a.set(1, b"");
        assert_eq!(a.get(1).unwrap(), b"");
        assert_eq!(a.get(2).unwrap(), b"value");
        assert_eq!(a.get(3), None);
        assert_eq!(a.quoted(), r#""SET" "" "value""#);
    }
}
