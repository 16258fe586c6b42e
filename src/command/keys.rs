//! Key extraction: which arguments of a command are keys, and how each is accessed.
//!
//! ## Behavior
//! This is Redis 7.0's `getKeysFromCommandWithSpecs` (db.c) rebuilt on ferry's table: key specs
//! are interpreted generically, and where the server itself falls back to per-command code
//! (specs of type `unknown`, `incomplete` or `variable_flags`, or specs that do not fit the
//! arguments) the same per-command rules apply: `SORT … STORE`, `MIGRATE … KEYS`, `SET … GET`,
//! `BITFIELD`, and the numkeys/`STREAMS`/`STORE` helpers. The result matches
//! `COMMAND GETKEYSANDFLAGS` key for key and flag for flag; a test holds it to that on a real
//! server.

use super::Argv;
use super::spec::{BeginSearch, CommandSpec, FindKeys, KeyFlags};

/// One key argument of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    /// Index in argv (1 is the first argument after the name).
    pub pos: usize,
    /// How the command accesses the key. Empty where Redis's fallback code reports no flags.
    pub flags: KeyFlags,
}

/// The server's per-command key code, used where the specs cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProc {
    None,
    /// `genericGetKeys(store, count, first, step)`.
    Numkeys {
        store: usize,
        count: usize,
        first: usize,
    },
    Sort,
    SortRo,
    Migrate,
    Georadius,
    Xread,
    Set,
    Bitfield,
    /// `MEMORY USAGE key`: before 7.0 `MEMORY` is one movable-key command (memoryGetKeys).
    Memory,
}

impl KeyProc {
    /// The helper Redis 7.0 registers for `name` (top-level, lower-case), if any.
    pub(crate) fn for_command(name: &str) -> KeyProc {
        let numkeys = |store, count, first| KeyProc::Numkeys {
            store,
            count,
            first,
        };
        match name {
            "zunionstore" | "zinterstore" | "zdiffstore" => numkeys(1, 2, 3),
            "zunion" | "zinter" | "zdiff" | "zintercard" | "sintercard" | "lmpop" | "zmpop" => {
                numkeys(0, 1, 2)
            }
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop"
            | "bzmpop" => numkeys(0, 2, 3),
            "sort" => KeyProc::Sort,
            "sort_ro" => KeyProc::SortRo,
            "migrate" => KeyProc::Migrate,
            // The read-only variants are movable before 7.0 (their tables have no key specs).
            "georadius" | "georadiusbymember" | "georadius_ro" | "georadiusbymember_ro" => {
                KeyProc::Georadius
            }
            "xread" | "xreadgroup" => KeyProc::Xread,
            "set" => KeyProc::Set,
            "bitfield" => KeyProc::Bitfield,
            "memory" => KeyProc::Memory,
            _ => KeyProc::None,
        }
    }
}

/// Why no key list could be produced; the server would answer
/// `Invalid arguments specified for command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidKeys;

/// Redis's `strcasecmp` on an argument: C strings, so the comparison ends at the first NUL.
fn eq_ci(a: &[u8], b: &str) -> bool {
    let a = memchr::memchr(0, a).map_or(a, |nul| &a[..nul]);
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// C `atoi`: leading whitespace, optional sign, digits; stops at the first other byte.
fn atoi(s: &[u8]) -> i64 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    while let Some(d) = s.get(i).filter(|d| d.is_ascii_digit()) {
        v = v.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        i += 1;
    }
    if neg { -v } else { v }
}

/// Redis `string2ll`: the whole argument must be a canonical integer.
fn string2ll(s: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(s).ok()?;
    if t.is_empty() || t.starts_with('+') || (t.len() > 1 && t.starts_with('0')) || t == "-0" {
        return None;
    }
    if t.starts_with("-0") {
        return None;
    }
    t.parse().ok()
}

/// Interprets the key specs; `Err` where Redis's `getKeysUsingKeySpecs` returns -1.
fn keys_from_specs(
    spec: &CommandSpec,
    argv: &Argv,
    out: &mut Vec<KeyRef>,
) -> Result<(), InvalidKeys> {
    let argc = argv.len() as i64;
    for ks in &spec.key_specs {
        if ks.flags.contains(KeyFlags::NOT_KEY) {
            continue;
        }
        let mut first: i64 = 0;
        match &ks.begin {
            BeginSearch::Index(pos) => first = i64::from(*pos),
            BeginSearch::Keyword { keyword, startfrom } => {
                let startfrom = i64::from(*startfrom);
                let start = if startfrom > 0 {
                    startfrom
                } else {
                    argc + startfrom
                };
                let end = if startfrom > 0 { argc - 1 } else { 1 };
                let mut i = start;
                while i != end {
                    if i >= argc || i < 1 {
                        break;
                    }
                    if eq_ci(argv.get(i as usize).unwrap_or_default(), keyword) {
                        first = i + 1;
                        break;
                    }
                    i = if start <= end { i + 1 } else { i - 1 };
                }
                if first == 0 {
                    continue;
                }
            }
            BeginSearch::Unknown => return Err(InvalidKeys),
        }
        let (last, step) = match ks.find {
            FindKeys::Range {
                lastkey,
                keystep,
                limit,
            } => {
                let lastkey = i64::from(lastkey);
                let last = if lastkey >= 0 {
                    first + lastkey
                } else if limit == 0 {
                    argc + lastkey
                } else {
                    first + ((argc - first) / i64::from(limit) + lastkey)
                };
                (last, i64::from(keystep))
            }
            FindKeys::Keynum {
                keynumidx,
                firstkey,
                keystep,
            } => {
                let idx = first + i64::from(keynumidx);
                if idx >= argc || idx < 0 {
                    return Err(InvalidKeys);
                }
                let numkeys = string2ll(argv.get(idx as usize).unwrap_or_default())
                    .filter(|n| *n >= 0)
                    .ok_or(InvalidKeys)?;
                first += i64::from(firstkey);
                // Redis truncates numkeys to int here.
                (first + i64::from(numkeys as i32) - 1, i64::from(keystep))
            }
            FindKeys::Unknown => return Err(InvalidKeys),
        };
        if last >= argc || last < first || first >= argc {
            return Err(InvalidKeys);
        }
        if step <= 0 {
            return Err(InvalidKeys);
        }
        let mut i = first;
        while i <= last {
            out.push(KeyRef {
                pos: i as usize,
                flags: ks.flags,
            });
            i += step;
        }
        if ks.flags.contains(KeyFlags::INCOMPLETE) {
            return Err(InvalidKeys);
        }
    }
    Ok(())
}

fn keys_from_proc(proc_: KeyProc, argv: &Argv, out: &mut Vec<KeyRef>) {
    let argc = argv.len();
    let arg = |i: usize| argv.get(i).unwrap_or_default();
    let push = |out: &mut Vec<KeyRef>, pos, flags| out.push(KeyRef { pos, flags });
    match proc_ {
        KeyProc::None => {}
        KeyProc::Numkeys {
            store,
            count,
            first,
        } => {
            if count >= argc {
                return;
            }
            let num = atoi(arg(count));
            if num < 1 || num > ((argc - first) as i64) {
                return;
            }
            for i in 0..num as usize {
                push(out, first + i, KeyFlags::empty());
            }
            if store > 0 {
                push(out, store, KeyFlags::empty());
            }
        }
        KeyProc::SortRo => push(out, 1, KeyFlags::RO | KeyFlags::ACCESS),
        KeyProc::Sort => {
            push(out, 1, KeyFlags::RO | KeyFlags::ACCESS);
            let mut store = None;
            let mut i = 2;
            while i < argc {
                let a = arg(i);
                // Same scan as sortGetKeys, quirks included: unknown words take no argument.
                if eq_ci(a, "limit") {
                    i += 2;
                } else if eq_ci(a, "store") && i + 1 < argc {
                    store = Some(i + 1);
                } else if eq_ci(a, "get") || eq_ci(a, "by") {
                    i += 1;
                }
                i += 1;
            }
            if let Some(pos) = store {
                push(out, pos, KeyFlags::OW | KeyFlags::UPDATE);
            }
        }
        KeyProc::Migrate => {
            let (mut first, mut num) = (3, 1);
            if argc > 6 {
                let mut i = 6;
                while i < argc {
                    let a = arg(i);
                    if eq_ci(a, "keys") {
                        if !arg(3).is_empty() {
                            num = 0;
                        } else {
                            first = i + 1;
                            num = argc - first;
                        }
                        break;
                    }
                    if eq_ci(a, "auth") {
                        i += 1;
                    } else if eq_ci(a, "auth2") {
                        i += 2;
                    }
                    i += 1;
                }
            }
            for i in 0..num {
                push(
                    out,
                    first + i,
                    KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::DELETE,
                );
            }
        }
        KeyProc::Georadius => {
            push(out, 1, KeyFlags::empty());
            let mut stored = None;
            let mut i = 5;
            while i < argc {
                let a = arg(i);
                if (eq_ci(a, "store") || eq_ci(a, "storedist")) && i + 1 < argc {
                    stored = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            if let Some(pos) = stored {
                push(out, pos, KeyFlags::empty());
            }
        }
        KeyProc::Xread => {
            let mut streams_pos = None;
            let mut i = 1;
            while i < argc {
                let a = arg(i);
                if eq_ci(a, "block") || eq_ci(a, "count") {
                    i += 1;
                } else if eq_ci(a, "group") {
                    i += 2;
                } else if eq_ci(a, "noack") {
                } else if eq_ci(a, "streams") {
                    streams_pos = Some(i);
                    break;
                } else {
                    break;
                }
                i += 1;
            }
            let Some(sp) = streams_pos else { return };
            let num = argc - sp - 1;
            if num == 0 || !num.is_multiple_of(2) {
                return;
            }
            for pos in sp + 1..sp + 1 + num / 2 {
                push(out, pos, KeyFlags::empty());
            }
        }
        KeyProc::Set => {
            let flags = if (3..argc).any(|i| eq_ci(arg(i), "get")) {
                KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE
            } else {
                KeyFlags::OW | KeyFlags::UPDATE
            };
            push(out, 1, flags);
        }
        KeyProc::Memory => {
            if argc >= 3 && eq_ci(arg(1), "usage") {
                push(out, 2, KeyFlags::RO);
            }
        }
        KeyProc::Bitfield => {
            let mut readonly = true;
            let mut i = 2;
            while i < argc {
                let remargs = argc - i - 1;
                let a = arg(i);
                if eq_ci(a, "get") && remargs >= 2 {
                    i += 2;
                } else if (eq_ci(a, "set") || eq_ci(a, "incrby")) && remargs >= 3 {
                    readonly = false;
                    break;
                } else if eq_ci(a, "overflow") && remargs >= 1 {
                    i += 1;
                } else {
                    readonly = false;
                    break;
                }
                i += 1;
            }
            let flags = if readonly {
                KeyFlags::RO | KeyFlags::ACCESS
            } else {
                KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE
            };
            push(out, 1, flags);
        }
    }
}

/// Appends the keys of `argv` (a call of `spec`) to `out`, in Redis's order.
pub(crate) fn extract(spec: &CommandSpec, proc_: KeyProc, argv: &Argv, out: &mut Vec<KeyRef>) {
    let has_keyspec = spec.has_key_specs();
    let has_varflags = spec
        .key_specs
        .iter()
        .any(|s| s.flags.contains(KeyFlags::VARIABLE_FLAGS));
    if has_keyspec && !has_varflags {
        let mark = out.len();
        if keys_from_specs(spec, argv, out).is_ok() {
            return;
        }
        out.truncate(mark);
    }
    keys_from_proc(proc_, argv, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_parsing_matches_redis() {
        assert_eq!(string2ll(b"12"), Some(12));
        assert_eq!(string2ll(b"-3"), Some(-3));
        assert_eq!(string2ll(b"012"), None);
        assert_eq!(string2ll(b"+1"), None);
        assert_eq!(string2ll(b"1a"), None);
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(atoi(b" 3abc"), 3);
        assert_eq!(atoi(b"x"), 0);
        assert_eq!(atoi(b"-2"), -2);
    }
}
