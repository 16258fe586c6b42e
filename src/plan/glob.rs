//! `Glob`: Redis's `KEYS` / `SCAN MATCH` patterns on raw key bytes, without recursion.
//!
//! ## Behavior
//! Matching is Redis 7.0's `stringmatchlen` (util.c), quirks included, so a plan's `keys.include`
//! selects exactly what `SCAN MATCH` with the same pattern would:
//! - `*` any run of bytes, `?` one byte, `[abc]`, `[^abc]`, `[a-z]` (reversed ranges are swapped,
//!   bounds compare as C's signed `char`, so `[a-\xff]` is not what it looks like), `\x` a
//!   literal `x` (a trailing lone `\` is itself);
//! - an unterminated class (`[abc`) is a class up to the end of the pattern; `[]` matches
//!   nothing and `[^]` any byte; `[a-]` is the range `]`..`a`, as in Redis;
//! - the empty key matches only the patterns `""` and `"*"` (Redis's `KEYS`/`SCAN` treat a lone
//!   `*` as "everything" before calling the matcher, and the matcher itself never matches an
//!   empty string against a non-empty pattern).
//!
//! The pattern is compiled once into tokens; matching keeps one backtrack point (the last `*`),
//! which is what Redis's `skipLongerMatches` pruning amounts to, so time is O(key × pattern) and
//! stack use is constant whatever the pattern.

use std::fmt;

/// One compiled pattern element; every element but `Star` consumes exactly one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Byte(u8),
    Class { negate: bool, items: Vec<ClassItem> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClassItem {
    Byte(u8),
    /// Inclusive bounds, already ordered, compared as signed `char` like the C code on x86-64.
    Range(i8, i8),
}

/// Fast paths for the shapes plans use most (`prefix:*`, exact names).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Everything,
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    General(Vec<Token>),
}

/// A compiled Redis glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<u8>,
    shape: Shape,
}

impl Glob {
    /// Compiles `pattern`. Every byte string is a valid pattern, as in Redis.
    pub fn new(pattern: &[u8]) -> Glob {
        let tokens = tokenize(pattern);
        let shape = if pattern == b"*" {
            Shape::Everything
        } else if let Some(exact) = literal(&tokens) {
            Shape::Exact(exact)
        } else if let Some((Token::Star, head)) = tokens.split_last().map(|(l, h)| (l.clone(), h))
            && let Some(prefix) = literal(head)
            && !prefix.is_empty()
        {
            Shape::Prefix(prefix)
        } else {
            Shape::General(tokens)
        };
        Glob {
            pattern: pattern.to_vec(),
            shape,
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &[u8] {
        &self.pattern
    }

    /// True when `key` matches, exactly as `SCAN 0 MATCH pattern` would return it.
    pub fn matches(&self, key: &[u8]) -> bool {
        match &self.shape {
            Shape::Everything => true,
            Shape::Exact(e) => key == e.as_slice(),
            Shape::Prefix(p) => key.starts_with(p),
            Shape::General(tokens) => !key.is_empty() && match_tokens(tokens, key),
        }
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", crate::escape::quote(&self.pattern))
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::escape::quote(&self.pattern))
    }
}

/// The bytes of a pattern made only of literals, if it is one.
fn literal(tokens: &[Token]) -> Option<Vec<u8>> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Byte(b) => Some(*b),
            _ => None,
        })
        .collect()
}

/// Splits a pattern into tokens the way `stringmatchlen` walks it. How far the C code advances
/// in the pattern never depends on the key, which is what makes compiling possible.
fn tokenize(p: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                // Consecutive stars are one star (the C code skips them).
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
                i += 1;
            }
            b'?' => {
                out.push(Token::Any);
                i += 1;
            }
            b'[' => {
                let (token, next) = class(p, i + 1);
                out.push(token);
                i = next;
            }
            b'\\' if i + 1 < p.len() => {
                out.push(Token::Byte(p[i + 1]));
                i += 2;
            }
            b => {
                out.push(Token::Byte(b));
                i += 1;
            }
        }
    }
    out
}

/// Parses a class starting after `[` at `i`; returns it and the index after it.
fn class(p: &[u8], mut i: usize) -> (Token, usize) {
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut items = Vec::new();
    loop {
        let left = p.len() - i;
        if left == 0 {
            // Unterminated: the class runs to the end of the pattern.
            break;
        }
        match p[i] {
            b'\\' if left >= 2 => {
                items.push(ClassItem::Byte(p[i + 1]));
                i += 2;
            }
            b']' => {
                i += 1;
                break;
            }
            a if left >= 3 && p[i + 1] == b'-' => {
                let (x, y) = (a as i8, p[i + 2] as i8);
                items.push(ClassItem::Range(x.min(y), x.max(y)));
                i += 3;
            }
            b => {
                items.push(ClassItem::Byte(b));
                i += 1;
            }
        }
    }
    (Token::Class { negate, items }, i)
}

impl Token {
    /// Whether this one-byte token accepts `c` (`Star` never gets here).
    fn accepts(&self, c: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(b) => *b == c,
            Token::Class { negate, items } => {
                let hit = items.iter().any(|it| match *it {
                    ClassItem::Byte(b) => b == c,
                    ClassItem::Range(lo, hi) => (lo..=hi).contains(&(c as i8)),
                });
                hit != *negate
            }
        }
    }
}

/// Glob matching with one backtrack point, for a non-empty key.
fn match_tokens(tokens: &[Token], key: &[u8]) -> bool {
    let (mut t, mut k) = (0, 0);
    // After the last star seen: the token index after it and the key index it resumes from.
    let mut resume: Option<(usize, usize)> = None;
    while k < key.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                t += 1;
                resume = Some((t, k));
                continue;
            }
            Some(tok) if tok.accepts(key[k]) => {
                t += 1;
                k += 1;
                continue;
            }
            _ => {}
        }
        match resume {
            // Let the star swallow one more byte and retry the rest from there.
            Some((rt, rk)) => {
                resume = Some((rt, rk + 1));
                t = rt;
                k = rk + 1;
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, k: &str) -> bool {
        Glob::new(p.as_bytes()).matches(k.as_bytes())
    }

    #[test]
    fn basics() {
        assert!(m("fs:*", "fs:1"));
        assert!(m("fs:*", "fs:"));
        assert!(!m("fs:*", "fs"));
        assert!(m("*", ""));
        assert!(!m("**", ""));
        assert!(m("**", "a"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hbllo"));
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m("a\\", "a\\"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("a*", "a"));
    }

    #[test]
    fn class_quirks() {
        // Unterminated class runs to the end.
        assert!(m("[abc", "b"));
        assert!(!m("[abc", "bc"));
        // `[]` is an empty class, then a literal `abc]`.
        assert!(!m("[]abc]", "]abc]"));
        assert!(m("[^]", "x"));
        assert!(m("[^", "x"));
        assert!(!m("[", "["));
        // `[a-]` is the range `]`..`a`.
        assert!(m("[a-]", "^"));
        assert!(!m("[a-]", "-"));
        assert!(m(r"[\]]", "]"));
        // Signed chars: `[a-\xff]` is the range -1..97 ('a'), so 0xff and 'a' match, 'b' doesn't.
        let g = Glob::new(b"[a-\xff]");
        assert!(g.matches(b"\xff"));
        assert!(g.matches(b"a"));
        assert!(g.matches(b"\x00"));
        assert!(!g.matches(b"b"));
        assert!(!g.matches(b"\x80"));
    }

    #[test]
    fn no_blowup() {
        let pattern = "*a".repeat(5000) + "b";
        let key = "a".repeat(20000);
        let g = Glob::new(pattern.as_bytes());
        assert!(!g.matches(key.as_bytes()));
    }
}
