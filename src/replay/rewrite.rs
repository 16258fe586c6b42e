//! Rewrite rules: turns one write captured from the source's `MONITOR` into what replay sends to
//! the target, and says when its effect cannot be reproduced exactly.
//!
//! ## Behavior
//! - Relative TTLs become absolute with `floor(ts_us / 1000) + ttl_ms`, the primary's own replica
//!   rewrite (docs/redis-behaviour.md §5, §14): `SET … EX|PX` and `GETEX … EX|PX` → `PXAT`, `SETEX`/`PSETEX`
//!   → `SET … PXAT`, `EXPIRE`/`PEXPIRE` → `PEXPIREAT`, `RESTORE ttl` → `RESTORE abs … ABSTTL`,
//!   and Redis 7.4's hash-field `HEXPIRE`/`HPEXPIRE` → `HPEXPIREAT` (what a 7.4 primary sends
//!   its replicas; `HEXPIREAT`, `HPEXPIREAT` and `HPERSIST` are already exact).
//!   Replay lag then no longer stretches TTLs on the target.
//! - Blocking commands become their non-blocking forms (`BLPOP` → `LMPOP`, `BLMOVE` → `LMOVE`,
//!   `XREADGROUP BLOCK` without `BLOCK` …) and are dirty: a blocked client served later by
//!   another client's push pops invisibly on the source (docs/redis-behaviour.md §4).
//! - Writes whose effect the server chooses (`nondeterministic_output` tip: `SPOP`, `XADD *`,
//!   `XTRIM ~`, `XCLAIM`, …) are sent but dirty. `MIGRATE` is dirty and not sent.
//! - Framing that replay handles elsewhere (`SELECT`, `MULTI`/`EXEC`/`DISCARD`,
//!   `WATCH`/`UNWATCH`) and messages (`PUBLISH`/`SPUBLISH`) are not sent.
//! - A command the source must have rejected (bad arity, a non-integer or out-of-range TTL or
//!   timeout, a syntax error) is returned unchanged, so it fails the same way on the target. A
//!   rewrite never turns a failing command into a succeeding one.
//! - Options are read the way Redis 7.0 reads them: keywords case-insensitive and compared as C
//!   strings, in any order, repeated `EX`/`PX` with the last one winning.
//! - The common case (no rule applies) returns the argv it was given, without allocating.

use crate::command::{Argv, CommandFlags, CommandTable};

/// What replay should do with one captured write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The command to send to the target; `None` = send nothing.
    pub argv: Option<Argv>,
    /// The command's effect cannot be reproduced exactly (server choices, invisible blocked-pop
    /// serving): its written keys must be re-copied from the source.
    pub dirty: bool,
}

impl Rewritten {
    fn send(argv: Argv) -> Self {
        Rewritten {
            argv: Some(argv),
            dirty: false,
        }
    }

    fn send_dirty(argv: Argv) -> Self {
        Rewritten {
            argv: Some(argv),
            dirty: true,
        }
    }

    fn skip(dirty: bool) -> Self {
        Rewritten { argv: None, dirty }
    }
}

/// Longest command name that has a rule; longer names go straight to the table.
const MAX_RULE_NAME: usize = 16;

/// Decides what to send to the target for `argv`, a write the source logged at `ts_us` (the
/// `MONITOR` line's timestamp: source wall clock, microseconds).
pub fn rewrite(table: &CommandTable, argv: Argv, ts_us: u64) -> Rewritten {
    let mut buf = [0u8; MAX_RULE_NAME];
    let name = argv.name();
    if name.len() > MAX_RULE_NAME {
        return by_table(table, argv);
    }
    let upper = &mut buf[..name.len()];
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    let now_ms = now_ms(ts_us);

    match &*upper {
        b"SET" => Rewritten::send(string_ttl(argv, 3, true, now_ms)),
        b"GETEX" => Rewritten::send(string_ttl(argv, 2, false, now_ms)),
        b"SETEX" => Rewritten::send(setex(argv, 1000, now_ms)),
        b"PSETEX" => Rewritten::send(setex(argv, 1, now_ms)),
        b"EXPIRE" => Rewritten::send(expire(argv, 1000, now_ms)),
        b"PEXPIRE" => Rewritten::send(expire(argv, 1, now_ms)),
        b"HEXPIRE" => Rewritten::send(hexpire(argv, 1000, now_ms)),
        b"HPEXPIRE" => Rewritten::send(hexpire(argv, 1, now_ms)),
        b"RESTORE" | b"RESTORE-ASKING" => Rewritten::send(restore(argv, now_ms)),

        b"BLPOP" => Rewritten::send_dirty(pop_first(argv, b"LMPOP", b"LEFT", now_ms)),
        b"BRPOP" => Rewritten::send_dirty(pop_first(argv, b"LMPOP", b"RIGHT", now_ms)),
        b"BZPOPMIN" => Rewritten::send_dirty(pop_first(argv, b"ZMPOP", b"MIN", now_ms)),
        b"BZPOPMAX" => Rewritten::send_dirty(pop_first(argv, b"ZMPOP", b"MAX", now_ms)),
        b"BLMOVE" => Rewritten::send_dirty(drop_timeout(argv, 6, b"LMOVE", now_ms)),
        b"BRPOPLPUSH" => Rewritten::send_dirty(drop_timeout(argv, 4, b"RPOPLPUSH", now_ms)),
        b"BLMPOP" => Rewritten::send_dirty(mpop(argv, b"LMPOP", now_ms)),
        b"BZMPOP" => Rewritten::send_dirty(mpop(argv, b"ZMPOP", now_ms)),
        // Delivery records (consumer, delivery time) are the server's, so the group is dirty
        // whether or not the call blocked.
        b"XREADGROUP" => Rewritten::send_dirty(strip_block(argv, now_ms)),
        // A read, but it must never block the replay connection either.
        b"XREAD" => Rewritten::send(strip_block(argv, now_ms)),

        b"XADD" => {
            let dirty = xadd_dirty(&argv);
            Rewritten {
                argv: Some(argv),
                dirty,
            }
        }
        b"XTRIM" => {
            let dirty = trim_dirty(&argv, 2, false);
            Rewritten {
                argv: Some(argv),
                dirty,
            }
        }
        // Would move the keys to a third server; the keys it deleted here are re-copied.
        b"MIGRATE" => Rewritten::skip(true),

        // The db comes from each line's header, and transactions are grouped before replay.
        b"SELECT" | b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" => {
            Rewritten::skip(false)
        }
        // Messages are not data; subscribers of the target are not the source's.
        b"PUBLISH" | b"SPUBLISH" => Rewritten::skip(false),
        // WAIT has no effect on data and, with no replica behind the target, would stall replay
        // for its whole timeout (forever for 0).
        b"WAIT" | b"WAITAOF" => Rewritten::skip(false),

        _ => by_table(table, argv),
    }
}

/// The rules that follow from the command table rather than from the name.
fn by_table(table: &CommandTable, argv: Argv) -> Rewritten {
    match table.lookup(&argv) {
        Some(spec) if spec.flags.contains(CommandFlags::BLOCKING) => {
            // A blocking command with no known non-blocking form (a module's, a newer
            // server's): sending it could stall replay, so its keys are re-copied instead.
            Rewritten::skip(spec.is_write())
        }
        Some(spec) if spec.is_write() && spec.is_nondeterministic() => Rewritten::send_dirty(argv),
        _ => Rewritten::send(argv),
    }
}

/// The source's clock in whole milliseconds, as the server truncates it for TTL arithmetic.
fn now_ms(ts_us: u64) -> i64 {
    // u64::MAX / 1000 < i64::MAX, so every timestamp converts; only the TTL sums can overflow.
    (ts_us / 1000) as i64
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros or spaces, no `-0`.
fn parse_ll(arg: &[u8]) -> Option<i64> {
    let (neg, digits) = match arg {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, arg),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulating negatively reaches i64::MIN, which has no positive counterpart.
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// An argument as C code sees it: Redis compares option keywords with `strcasecmp` and
/// `opt[n] == '\0'` tests, which stop at the first NUL.
fn cstr(arg: &[u8]) -> &[u8] {
    match memchr::memchr(0, arg) {
        Some(n) => &arg[..n],
        None => arg,
    }
}

fn is_kw(arg: &[u8], kw: &[u8]) -> bool {
    cstr(arg).eq_ignore_ascii_case(kw)
}

fn arg(argv: &Argv, i: usize) -> &[u8] {
    argv.get(i).unwrap_or_default()
}

fn num(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// A `SET`/`GETEX`/`SETEX` TTL as an absolute time: the value must be what the source accepted
/// (positive, and for seconds at most `i64::MAX / 1000`), and the sum must not overflow.
fn positive_ttl_abs(value: &[u8], unit_ms: i64, now_ms: i64) -> Option<i64> {
    let v = parse_ll(value)?;
    if v <= 0 {
        return None;
    }
    now_ms.checked_add(v.checked_mul(unit_ms)?)
}

/// One token of `SET`/`GETEX` options, as Redis's `parseExtendedStringArgumentsOrReply` reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StrOpt {
    /// A flag kept as is (`NX`, `XX`, `GET`, `KEEPTTL`, `PERSIST`).
    Flag,
    /// A relative expiry keyword (`EX` in seconds or `PX`), its value in the next argument.
    Relative { unit_ms: i64 },
    /// An absolute expiry keyword (`EXAT`/`PXAT`), its value in the next argument.
    Absolute,
}

/// Walks `SET`/`GETEX` options from `start`, calling `each(pos, opt)` per token; `false` when the
/// source answered a syntax error.
fn scan_string_opts(
    argv: &Argv,
    start: usize,
    set: bool,
    mut each: impl FnMut(usize, StrOpt),
) -> bool {
    const NX: u16 = 1;
    const XX: u16 = 2;
    const KEEPTTL: u16 = 4;
    const PERSIST: u16 = 8;
    const EX: u16 = 16;
    const PX: u16 = 32;
    const EXAT: u16 = 64;
    const PXAT: u16 = 128;
    let mut flags = 0u16;
    let none = |flags: u16, of: u16| flags & of == 0;
    let n = argv.len();
    let mut j = start;
    while j < n {
        let opt = arg(argv, j);
        let has_next = j + 1 < n;
        let (bit, kind) = if set && is_kw(opt, b"NX") && none(flags, XX) {
            (NX, StrOpt::Flag)
        } else if set && is_kw(opt, b"XX") && none(flags, NX) {
            (XX, StrOpt::Flag)
        } else if set && is_kw(opt, b"GET") {
            (0, StrOpt::Flag)
        } else if set && is_kw(opt, b"KEEPTTL") && none(flags, PERSIST | EX | EXAT | PX | PXAT) {
            (KEEPTTL, StrOpt::Flag)
        } else if !set && is_kw(opt, b"PERSIST") && none(flags, EX | EXAT | PX | PXAT | KEEPTTL) {
            (PERSIST, StrOpt::Flag)
        } else if is_kw(opt, b"EX") && none(flags, KEEPTTL | PERSIST | EXAT | PX | PXAT) && has_next
        {
            (EX, StrOpt::Relative { unit_ms: 1000 })
        } else if is_kw(opt, b"PX") && none(flags, KEEPTTL | PERSIST | EX | EXAT | PXAT) && has_next
        {
            (PX, StrOpt::Relative { unit_ms: 1 })
        } else if is_kw(opt, b"EXAT") && none(flags, KEEPTTL | PERSIST | EX | PX | PXAT) && has_next
        {
            (EXAT, StrOpt::Absolute)
        } else if is_kw(opt, b"PXAT") && none(flags, KEEPTTL | PERSIST | EX | EXAT | PX) && has_next
        {
            (PXAT, StrOpt::Absolute)
        } else {
            return false;
        };
        flags |= bit;
        each(j, kind);
        j += if kind == StrOpt::Flag { 1 } else { 2 };
    }
    true
}

/// `SET k v … EX|PX n …` and `GETEX k EX|PX n`: the effective (last) relative pair becomes
/// `PXAT abs`; earlier pairs, which Redis overrode without reading, are dropped.
fn string_ttl(argv: Argv, start: usize, set: bool, now_ms: i64) -> Argv {
    let mut last = None;
    let syntax_ok = scan_string_opts(&argv, start, set, |pos, opt| {
        if let StrOpt::Relative { unit_ms } = opt {
            last = Some((pos, unit_ms));
        }
    });
    let Some((last_pos, unit_ms)) = last.filter(|_| syntax_ok) else {
        return argv;
    };
    let Some(abs) = positive_ttl_abs(arg(&argv, last_pos + 1), unit_ms, now_ms) else {
        return argv;
    };
    let mut out = Argv::new();
    for a in argv.iter().take(start) {
        out.push(a);
    }
    scan_string_opts(&argv, start, set, |pos, opt| match opt {
        StrOpt::Flag => out.push(arg(&argv, pos)),
        StrOpt::Relative { .. } if pos == last_pos => {
            out.push(b"PXAT");
            out.push(&num(abs));
        }
        StrOpt::Relative { .. } => {}
        StrOpt::Absolute => {
            out.push(arg(&argv, pos));
            out.push(arg(&argv, pos + 1));
        }
    });
    out
}

/// `SETEX k s v` / `PSETEX k ms v` → `SET k v PXAT abs`.
fn setex(argv: Argv, unit_ms: i64, now_ms: i64) -> Argv {
    if argv.len() != 4 {
        return argv;
    }
    let Some(abs) = positive_ttl_abs(arg(&argv, 2), unit_ms, now_ms) else {
        return argv;
    };
    Argv::from_args([
        &b"SET"[..],
        arg(&argv, 1),
        arg(&argv, 3),
        b"PXAT",
        &num(abs),
    ])
}

/// `EXPIRE k s [flags]` / `PEXPIRE k ms [flags]` → `PEXPIREAT k abs [flags]`. Unlike `SET`, a
/// zero or negative TTL is valid: the key is deleted, which a past `PEXPIREAT` reproduces.
fn expire(argv: Argv, unit_ms: i64, now_ms: i64) -> Argv {
    if argv.len() < 3 {
        return argv;
    }
    let Some(ttl_ms) = parse_ll(arg(&argv, 2)).and_then(|v| v.checked_mul(unit_ms)) else {
        return argv;
    };
    let Some(abs) = now_ms.checked_add(ttl_ms) else {
        return argv;
    };
    let mut out = Argv::new();
    out.push(b"PEXPIREAT");
    out.push(arg(&argv, 1));
    out.push(&num(abs));
    for a in argv.iter().skip(3) {
        out.push(a);
    }
    out
}

/// The largest absolute field expiry Redis 7.4 accepts, in ms (`HFE_MAX_ABS_TIME_MSEC`,
/// `EB_EXPIRE_TIME_MAX >> 2` in t_hash.c).
const HFE_MAX_ABS_TIME_MS: i64 = 0x0000_FFFF_FFFF_FFFF >> 2;

/// `HEXPIRE k s [NX|XX|GT|LT] FIELDS n f…` / `HPEXPIRE k ms …` → `HPEXPIREAT k abs …`, checked
/// as t_hash.c's `hexpireGenericCommand` checks it: a negative TTL, seconds past the bound, or an
/// absolute time past `HFE_MAX_ABS_TIME_MSEC` was an error on the source, so the command stays
/// as it was. A zero TTL deletes the fields on the source; a past `HPEXPIREAT` does the same.
/// The condition, `FIELDS` and the fields are kept in place: the source checked them, and the
/// target checks the same words the same way.
fn hexpire(argv: Argv, unit_ms: i64, now_ms: i64) -> Argv {
    if argv.len() < 6 {
        return argv;
    }
    let Some(ttl) = parse_ll(arg(&argv, 2)).filter(|v| *v >= 0) else {
        return argv;
    };
    if unit_ms == 1000 && ttl > HFE_MAX_ABS_TIME_MS / 1000 {
        return argv;
    }
    let ttl_ms = ttl * unit_ms;
    if ttl_ms > HFE_MAX_ABS_TIME_MS.saturating_sub(now_ms) {
        return argv;
    }
    let mut out = Argv::new();
    out.push(b"HPEXPIREAT");
    out.push(arg(&argv, 1));
    out.push(&num(now_ms + ttl_ms));
    for a in argv.iter().skip(3) {
        out.push(a);
    }
    out
}

/// Sets `KEYS[1]` with `SET` and the options after `ARGV[2]` and, when it was set, its absolute
/// expiry `ARGV[2]` with `PEXPIREAT` (Redis 2.6): `SET … PXAT` for a target before Redis 6.2,
/// atomic like the original, `NX`/`XX` included.
pub const SET_PXAT_SCRIPT: &str = "local r = redis.call('SET', KEYS[1], ARGV[1], unpack(ARGV, 3)) \
if r then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end return r";

/// What a target older than a rewritten command's form gets instead of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lowered {
    /// The target has the form: send it.
    Send(Argv),
    /// The target lacks the form and nothing it has is the same: nothing is sent, and the
    /// command's written keys are re-copied.
    Recopy,
}

/// `argv`, as [`rewrite`] left it, in a form a target at Redis level `target` (major, minor)
/// knows: `SET … PXAT|EXAT` (6.2) as [`SET_PXAT_SCRIPT`]; the non-blocking forms of blocking
/// pops (`LMPOP`, `ZMPOP`: 7.0; `LMOVE`: 6.2), already dirty, are not sent; `RESTORE … ABSTTL`
/// (5.0) is re-copied instead (its relative TTL would count from replay's time, not the
/// source's). Everything else is sent as it is: what an older target still refuses (a newer
/// source's commands) fails there with `ERR`, which toward an older target means a re-copy
/// (docs/redis-behaviour.md §22).
pub fn for_older_target(argv: Argv, target: (u32, u32)) -> Lowered {
    let name = argv.name();
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if (is(b"LMPOP") || is(b"ZMPOP")) && target < (7, 0) || is(b"LMOVE") && target < (6, 2) {
        return Lowered::Recopy;
    }
    if is(b"RESTORE") && target < (5, 0) && argv.iter().any(|a| is_kw(a, b"ABSTTL")) {
        return Lowered::Recopy;
    }
    if !is(b"SET") || target >= (6, 2) || argv.len() < 5 {
        return Lowered::Send(argv);
    }
    let mut at = None;
    let mut rest: Vec<&[u8]> = Vec::new();
    let ok = scan_string_opts(&argv, 3, true, |pos, opt| match opt {
        StrOpt::Absolute => at = Some(pos),
        StrOpt::Relative { .. } => at = None,
        StrOpt::Flag => rest.push(arg(&argv, pos)),
    });
    let Some(pos) = at.filter(|_| ok) else {
        return Lowered::Send(argv);
    };
    let unit_ms = if is_kw(arg(&argv, pos), b"EXAT") {
        1000
    } else {
        1
    };
    let Some(ms) = parse_ll(arg(&argv, pos + 1)).and_then(|t| t.checked_mul(unit_ms)) else {
        return Lowered::Send(argv);
    };
    let mut out = Argv::new();
    for a in [
        &b"EVAL"[..],
        SET_PXAT_SCRIPT.as_bytes(),
        b"1",
        arg(&argv, 1),
        arg(&argv, 2),
    ] {
        out.push(a);
    }
    out.push(&num(ms));
    for a in rest {
        out.push(a);
    }
    Lowered::Send(out)
}

/// What a target without hash-field TTLs (a plan's `drop_field_ttls`) gets instead of a
/// field-TTL command, as [`rewrite`] left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldTtlDrop {
    /// Not a field-TTL command: send it.
    Keep,
    /// A TTL set in the future, or `HPERSIST`: the target's fields have no TTL anyway, so
    /// nothing is sent (one TTL dropped).
    Drop,
    /// A time at or before the command's own: the source deleted the fields (if the condition
    /// held), which only a re-copy of the key can tell; nothing is sent, the key is dirty.
    Recopy,
}

/// Decides [`FieldTtlDrop`] for `argv` after [`rewrite`] (so relative forms are already
/// `HPEXPIREAT`), logged by the source at `ts_us`. A command whose time does not parse failed
/// on the source and changed nothing: dropped.
pub fn drop_field_ttl(argv: &Argv, ts_us: u64) -> FieldTtlDrop {
    let name = argv.name();
    let unit_ms = if name.eq_ignore_ascii_case(b"HPEXPIREAT") {
        1
    } else if name.eq_ignore_ascii_case(b"HEXPIREAT") {
        1000
    } else if name.eq_ignore_ascii_case(b"HPERSIST")
        || name.eq_ignore_ascii_case(b"HEXPIRE")
        || name.eq_ignore_ascii_case(b"HPEXPIRE")
    {
        // HEXPIRE/HPEXPIRE left as they were were errors on the source.
        return FieldTtlDrop::Drop;
    } else {
        return FieldTtlDrop::Keep;
    };
    match parse_ll(arg(argv, 2)).and_then(|t| t.checked_mul(unit_ms)) {
        Some(at) if at <= now_ms(ts_us) => FieldTtlDrop::Recopy,
        _ => FieldTtlDrop::Drop,
    }
}

/// `RESTORE k ttl payload [REPLACE] [IDLETIME n] [FREQ n]` with a positive relative ttl →
/// absolute ttl plus `ABSTTL`. Options must parse as Redis parses them, else the source failed.
fn restore(mut argv: Argv, now_ms: i64) -> Argv {
    let n = argv.len();
    if n < 4 {
        return argv;
    }
    let (mut idle, mut freq) = (false, false);
    let mut j = 4;
    while j < n {
        let opt = arg(&argv, j);
        let more = j + 1 < n;
        if is_kw(opt, b"REPLACE") {
        } else if is_kw(opt, b"ABSTTL") {
            return argv;
        } else if is_kw(opt, b"IDLETIME") && more && !freq {
            idle = true;
            j += 1;
        } else if is_kw(opt, b"FREQ") && more && !idle {
            freq = true;
            j += 1;
        } else {
            return argv;
        }
        j += 1;
    }
    let Some(abs) = positive_ttl_abs(arg(&argv, 2), 1, now_ms) else {
        return argv;
    };
    argv.set(2, &num(abs));
    argv.push(b"ABSTTL");
    argv
}

/// Would Redis accept this blocking timeout in seconds (`getTimeoutFromObjectOrReply`)? Only
/// a sure "no" leaves the command unchanged (it then fails on the target without blocking);
/// anything doubtful counts as accepted, because a rewritten pop is dirty anyway.
fn seconds_timeout_ok(arg: &[u8], now_ms: i64) -> bool {
    // strtold refuses leading space and anything it does not consume to the end (NUL included).
    if arg.is_empty() || arg.len() >= 5 * 1024 || arg[0].is_ascii_whitespace() || arg[0] == 0x0b {
        return false;
    }
    let Ok(text) = std::str::from_utf8(arg) else {
        return false;
    };
    let secs: f64 = match text.parse() {
        Ok(v) => v,
        // strtold also reads hexadecimal floats, which Rust does not.
        Err(_) => {
            let unsigned = text.trim_start_matches(['+', '-']);
            return unsigned.starts_with("0x") || unsigned.starts_with("0X");
        }
    };
    if secs.is_nan() {
        return false;
    }
    // `(long long)(secs * 1000)` truncates toward zero; -0.0001 is a valid "block forever".
    let ms = (secs * 1000.0).trunc();
    // Out-of-range conversions give LLONG_MIN on x86 and saturate elsewhere: rejected either way.
    if !(0.0..i64::MAX as f64).contains(&ms) {
        return false;
    }
    ms as i64 <= i64::MAX.saturating_sub(now_ms)
}

/// Would Redis accept this blocking timeout in milliseconds (`XREAD`/`XREADGROUP BLOCK`)?
fn millis_timeout_ok(arg: &[u8], now_ms: i64) -> bool {
    parse_ll(arg).is_some_and(|ms| ms >= 0 && ms <= i64::MAX.saturating_sub(now_ms))
}

/// `BLPOP k… t` and friends → `LMPOP|ZMPOP n k… side`: with data present both pop from the
/// first non-empty key.
fn pop_first(argv: Argv, to: &[u8], side: &[u8], now_ms: i64) -> Argv {
    let n = argv.len();
    if n < 3 || !seconds_timeout_ok(arg(&argv, n - 1), now_ms) {
        return argv;
    }
    let mut out = Argv::new();
    out.push(to);
    out.push(&num(n as i64 - 2));
    for k in argv.iter().take(n - 1).skip(1) {
        out.push(k);
    }
    out.push(side);
    out
}

/// `BLMOVE s d wf wt t` → `LMOVE s d wf wt`, `BRPOPLPUSH s d t` → `RPOPLPUSH s d`.
fn drop_timeout(argv: Argv, arity: usize, to: &[u8], now_ms: i64) -> Argv {
    if argv.len() != arity || !seconds_timeout_ok(arg(&argv, arity - 1), now_ms) {
        return argv;
    }
    let mut out = Argv::new();
    out.push(to);
    for a in argv.iter().take(arity - 1).skip(1) {
        out.push(a);
    }
    out
}

/// `BLMPOP t n k… dir [COUNT c]` → `LMPOP n k… dir [COUNT c]` (and `BZMPOP` → `ZMPOP`).
fn mpop(argv: Argv, to: &[u8], now_ms: i64) -> Argv {
    if argv.len() < 5 || !seconds_timeout_ok(arg(&argv, 1), now_ms) {
        return argv;
    }
    let mut out = Argv::new();
    out.push(to);
    for a in argv.iter().skip(2) {
        out.push(a);
    }
    out
}

/// `XREAD`/`XREADGROUP` without their `BLOCK ms` pairs, found the way `xreadCommand` walks the
/// options up to `STREAMS` (after it, every argument is a key or an id).
fn strip_block(argv: Argv, now_ms: i64) -> Argv {
    let n = argv.len();
    let mut blocks = false;
    let mut i = 1;
    while i < n {
        let opt = arg(&argv, i);
        let more = n - i - 1;
        if is_kw(opt, b"BLOCK") && more >= 1 {
            if !millis_timeout_ok(arg(&argv, i + 1), now_ms) {
                return argv;
            }
            blocks = true;
            i += 1;
        } else if is_kw(opt, b"COUNT") && more >= 1 {
            i += 1;
        } else if is_kw(opt, b"GROUP") && more >= 2 {
            i += 2;
        } else if is_kw(opt, b"STREAMS") && more >= 1 {
            break;
        } else if !is_kw(opt, b"NOACK") {
            // The source reported a syntax error here, after reading any BLOCK before it;
            // without those pairs the target reports the same error and still never blocks.
            break;
        }
        i += 1;
    }
    if !blocks {
        return argv;
    }
    let end = i;
    let mut out = Argv::new();
    out.push(arg(&argv, 0));
    // The same walk again, so that a group or consumer named BLOCK stays a name.
    let mut i = 1;
    while i < end {
        let opt = arg(&argv, i);
        let more = n - i - 1;
        let width = if is_kw(opt, b"BLOCK") && more >= 1 {
            i += 2;
            continue;
        } else if is_kw(opt, b"COUNT") && more >= 1 {
            2
        } else if is_kw(opt, b"GROUP") && more >= 2 {
            3
        } else {
            1
        };
        for a in argv.iter().skip(i).take(width) {
            out.push(a);
        }
        i += width;
    }
    for a in argv.iter().skip(i) {
        out.push(a);
    }
    out
}

/// `XADD` is exact only with an explicit full id and no approximate trimming; an auto id
/// (`*`, `<ms>-*`) or `~` lets the server choose. Anything unparseable counts as dirty.
fn xadd_dirty(argv: &Argv) -> bool {
    trim_dirty(argv, 2, true)
}

/// Walks `XADD`/`XTRIM` options as `streamParseAddOrTrimArgsOrReply` does: dirty when trimming
/// is approximate, when `XADD`'s id is server-chosen, or when the walk fails.
fn trim_dirty(argv: &Argv, start: usize, xadd: bool) -> bool {
    let n = argv.len();
    let mut approx = false;
    let mut trims = false;
    let mut i = start;
    while i < n {
        let opt = arg(argv, i);
        let more = n - 1 - i;
        if xadd && cstr(opt) == b"*" {
            return true;
        } else if (is_kw(opt, b"MAXLEN") || is_kw(opt, b"MINID")) && more >= 1 {
            let next = cstr(arg(argv, i + 1));
            if more >= 2 && next == b"~" {
                approx = true;
                i += 1;
            } else if more >= 2 && next == b"=" {
                i += 1;
            }
            trims = true;
            i += 1;
        } else if is_kw(opt, b"LIMIT") && more >= 1 {
            i += 1;
        } else if xadd && is_kw(opt, b"NOMKSTREAM") {
        } else if xadd {
            return approx || cstr(opt).ends_with(b"-*");
        } else {
            return true;
        }
        i += 1;
    }
    // XADD without an id, or XTRIM without a strategy, failed on the source; dirty is harmless.
    xadd || approx || !trims
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary source timestamp (µs) for these tests; docs/redis-behaviour.md §5 shows the
    /// rule on observed lines.
    const TS: u64 = 1_795_658_100_048_943;

    fn rw(args: &[&str]) -> Rewritten {
        rewrite(CommandTable::builtin(), Argv::from_args(args), TS)
    }

    fn send(args: &[&str]) -> Rewritten {
        Rewritten::send(Argv::from_args(args))
    }

    fn dirty(args: &[&str]) -> Rewritten {
        Rewritten::send_dirty(Argv::from_args(args))
    }

    fn unchanged(args: &[&str]) {
        assert_eq!(rw(args), send(args), "{args:?} should pass through");
    }

    #[test]
    fn rewrite_reproduces_the_primarys_own_rewrite() {
        // docs/redis-behaviour.md §5 table: primary line (with its timestamp) → replica line.
        let rows: &[(&[&str], u64, &[&str])] = &[
            (
                &["SET", "k", "v", "EX", "100"],
                1_796_613_575_296_418,
                &["SET", "k", "v", "PXAT", "1796613675296"],
            ),
            (
                &["EXPIRE", "k", "50"],
                1_796_613_575_316_892,
                &["PEXPIREAT", "k", "1796613625316"],
            ),
            (
                &["SETEX", "k2", "100", "v"],
                1_796_613_575_337_449,
                &["SET", "k2", "v", "PXAT", "1796613675337"],
            ),
            (
                &["PSETEX", "k3", "100000", "v"],
                1_796_613_575_357_930,
                &["SET", "k3", "v", "PXAT", "1796613675357"],
            ),
            (
                &["SET", "exp", "v", "PX", "100"],
                1_796_613_575_399_165,
                &["SET", "exp", "v", "PXAT", "1796613575499"],
            ),
        ];
        for (primary, ts, replica) in rows {
            assert_eq!(
                rewrite(CommandTable::builtin(), Argv::from_args(*primary), *ts),
                send(replica),
                "{primary:?} at {ts}"
            );
        }
    }

    #[test]
    fn rewrite_set_keeps_other_options_in_place() {
        assert_eq!(
            rw(&["set", "k", "v", "nx", "px", "1500", "get"]),
            send(&["set", "k", "v", "nx", "PXAT", "1795658101548", "get"])
        );
        assert_eq!(
            rw(&["SET", "k", "v", "Get", "eX", "1", "XX"]),
            send(&["SET", "k", "v", "Get", "PXAT", "1795658101048", "XX"])
        );
        // Repeated EX: Redis keeps the last and never reads the earlier value.
        assert_eq!(
            rw(&["SET", "k", "v", "EX", "abc", "NX", "ex", "2"]),
            send(&["SET", "k", "v", "NX", "PXAT", "1795658102048"])
        );
        assert_eq!(
            rw(&["SET", "k", "v", "PX", "1", "PX", "2"]),
            send(&["SET", "k", "v", "PXAT", "1795658100050"])
        );
        // A keyword with a NUL is still the keyword to Redis's C comparisons.
        assert_eq!(
            rw(&["SET", "k", "v", "EX\0junk", "1"]),
            send(&["SET", "k", "v", "PXAT", "1795658101048"])
        );
    }

    #[test]
    fn rewrite_set_leaves_absolute_and_rejected_forms() {
        for args in [
            &["SET", "k", "v"][..],
            &["SET", "k", "v", "KEEPTTL"],
            &["SET", "k", "v", "GET"],
            &["SET", "k", "v", "EXAT", "4102444800"],
            &["SET", "k", "v", "pxat", "4102444800000", "NX"],
            // syntax errors on the source
            &["SET", "k", "v", "EX", "10", "PX", "100"],
            &["SET", "k", "v", "PX", "10", "EX", "100"],
            &["SET", "k", "v", "EX", "10", "KEEPTTL"],
            &["SET", "k", "v", "KEEPTTL", "EX", "10"],
            &["SET", "k", "v", "EX", "10", "EXAT", "1"],
            &["SET", "k", "v", "NX", "XX", "EX", "10"],
            &["SET", "k", "v", "EX"],
            &["SET", "k", "v", "EX", "10", "EX"],
            &["SET", "k", "v", "PERSIST", "EX", "10"],
            &["SET", "k", "v", "BADOPT", "EX", "10"],
            &["SET", "k", "v", "EX", "10", "BADOPT"],
            // invalid expire times
            &["SET", "k", "v", "EX", "0"],
            &["SET", "k", "v", "EX", "-5"],
            &["SET", "k", "v", "PX", "0"],
            &["SET", "k", "v", "EX", "010"],
            &["SET", "k", "v", "EX", "+10"],
            &["SET", "k", "v", "EX", " 10"],
            &["SET", "k", "v", "EX", "1.5"],
            &["SET", "k", "v", "EX", ""],
            &["SET", "k", "v", "EX", "-0"],
            &["SET", "k", "v", "EX", "9223372036854775"],
            &["SET", "k", "v", "PX", "9223372036854775807"],
            &["SET", "k", "v", "EX", "99999999999999999999"],
            // arity
            &["SET"],
            &["SET", "k"],
            &["SET", "k", "EX"],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_setex_psetex() {
        assert_eq!(
            rw(&["setex", "k", "100", "v"]),
            send(&["SET", "k", "v", "PXAT", "1795658200048"])
        );
        assert_eq!(
            rw(&["PSETEX", "k", "100000", "v"]),
            send(&["SET", "k", "v", "PXAT", "1795658200048"])
        );
        for args in [
            &["SETEX", "k", "0", "v"][..],
            &["SETEX", "k", "-1", "v"],
            &["SETEX", "k", "x", "v"],
            &["SETEX", "k", "9223372036854776", "v"],
            &["PSETEX", "k", "0", "v"],
            &["SETEX", "k", "10"],
            &["SETEX", "k", "10", "v", "extra"],
            &["PSETEX"],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_expire_pexpire() {
        assert_eq!(
            rw(&["EXPIRE", "k", "50"]),
            send(&["PEXPIREAT", "k", "1795658150048"])
        );
        assert_eq!(
            rw(&["pexpire", "k", "50000", "gt"]),
            send(&["PEXPIREAT", "k", "1795658150048", "gt"])
        );
        assert_eq!(
            rw(&["EXPIRE", "k", "60", "NX", "xx"]),
            send(&["PEXPIREAT", "k", "1795658160048", "NX", "xx"])
        );
        // Zero and negative TTLs delete the key on the source: a past PEXPIREAT does the same.
        assert_eq!(
            rw(&["EXPIRE", "k", "-1"]),
            send(&["PEXPIREAT", "k", "1795658099048"])
        );
        assert_eq!(
            rw(&["PEXPIRE", "k", "0"]),
            send(&["PEXPIREAT", "k", "1795658100048"])
        );
        assert_eq!(
            rw(&["EXPIRE", "k", "-9223372036854775"]),
            send(&["PEXPIREAT", "k", "-9223370241196674952"])
        );
        for args in [
            &["EXPIRE", "k"][..],
            &["EXPIRE"],
            &["EXPIRE", "k", "ten"],
            &["EXPIRE", "k", "1e3"],
            &["EXPIRE", "k", "9223372036854776"],
            &["EXPIRE", "k", "-9223372036854776"],
            &["EXPIRE", "k", "9223372036854775"],
            &["PEXPIRE", "k", "9223372036854775807"],
        ] {
            unchanged(args);
        }
        // Absolute forms are already exact.
        unchanged(&["EXPIREAT", "k", "4102444800"]);
        unchanged(&["PEXPIREAT", "k", "4102444800000", "GT"]);
        unchanged(&["PERSIST", "k"]);
    }

    #[test]
    fn rewrite_hexpire_hpexpire() {
        assert_eq!(
            rw(&["HEXPIRE", "h", "50", "FIELDS", "1", "f"]),
            send(&["HPEXPIREAT", "h", "1795658150048", "FIELDS", "1", "f"])
        );
        assert_eq!(
            rw(&["hpexpire", "h", "50000", "gt", "fields", "2", "a", "b"]),
            send(&[
                "HPEXPIREAT",
                "h",
                "1795658150048",
                "gt",
                "fields",
                "2",
                "a",
                "b"
            ])
        );
        for cond in ["NX", "XX", "GT", "LT"] {
            assert_eq!(
                rw(&["HEXPIRE", "h", "1", cond, "FIELDS", "1", "f"]),
                send(&["HPEXPIREAT", "h", "1795658101048", cond, "FIELDS", "1", "f"])
            );
        }
        // Zero deletes the fields on the source: a past HPEXPIREAT does the same.
        assert_eq!(
            rw(&["HPEXPIRE", "h", "0", "FIELDS", "1", "f"]),
            send(&["HPEXPIREAT", "h", "1795658100048", "FIELDS", "1", "f"])
        );
        // The largest accepted values still rewrite; one more is the source's error.
        let max_s = (HFE_MAX_ABS_TIME_MS - 1_795_658_100_048) / 1000;
        assert!(
            rw(&["HEXPIRE", "h", &max_s.to_string(), "FIELDS", "1", "f"])
                .argv
                .unwrap()
                .name()
                == b"HPEXPIREAT"
        );
        let max_ms = HFE_MAX_ABS_TIME_MS - 1_795_658_100_048;
        assert_eq!(
            rw(&["HPEXPIRE", "h", &max_ms.to_string(), "FIELDS", "1", "f"]),
            send(&[
                "HPEXPIREAT",
                "h",
                &HFE_MAX_ABS_TIME_MS.to_string(),
                "FIELDS",
                "1",
                "f"
            ])
        );
        for args in [
            &["HEXPIRE", "h", "50", "FIELDS", "1"][..],
            &["HEXPIRE", "h", "-1", "FIELDS", "1", "f"],
            &["HEXPIRE", "h", "ten", "FIELDS", "1", "f"],
            &["HEXPIRE", "h", "17592186044416", "FIELDS", "1", "f"],
            &[
                "HPEXPIRE",
                "h",
                &(max_ms + 1).to_string(),
                "FIELDS",
                "1",
                "f",
            ],
            &["HPEXPIRE", "h", "9223372036854775807", "FIELDS", "1", "f"],
        ] {
            unchanged(args);
        }
        // Absolute forms and HPERSIST are already exact.
        unchanged(&["HEXPIREAT", "h", "4102444800", "FIELDS", "1", "f"]);
        unchanged(&["HPEXPIREAT", "h", "4102444800000", "XX", "FIELDS", "1", "f"]);
        unchanged(&["HPERSIST", "h", "FIELDS", "1", "f"]);
    }

    #[test]
    fn field_ttls_dropped_for_a_target_without_them() {
        let drop = |args: &[&str]| {
            let r = rw(args);
            drop_field_ttl(&r.argv.unwrap(), TS)
        };
        assert_eq!(
            drop(&["HEXPIRE", "h", "50", "FIELDS", "1", "f"]),
            FieldTtlDrop::Drop
        );
        assert_eq!(
            drop(&["HPERSIST", "h", "FIELDS", "1", "f"]),
            FieldTtlDrop::Drop
        );
        assert_eq!(
            drop(&["HPEXPIREAT", "h", "4102444800000", "FIELDS", "1", "f"]),
            FieldTtlDrop::Drop
        );
        // Zero, or a time already past, deletes the fields on the source.
        assert_eq!(
            drop(&["HPEXPIRE", "h", "0", "FIELDS", "1", "f"]),
            FieldTtlDrop::Recopy
        );
        assert_eq!(
            drop(&["HEXPIREAT", "h", "1", "FIELDS", "1", "f"]),
            FieldTtlDrop::Recopy
        );
        // The source's errors changed nothing.
        assert_eq!(
            drop(&["HEXPIRE", "h", "-1", "FIELDS", "1", "f"]),
            FieldTtlDrop::Drop
        );
        assert_eq!(
            drop(&["HPEXPIREAT", "h", "x", "FIELDS", "1", "f"]),
            FieldTtlDrop::Drop
        );
        assert_eq!(drop(&["HSET", "h", "f", "v"]), FieldTtlDrop::Keep);
        assert_eq!(drop(&["EXPIRE", "h", "0"]), FieldTtlDrop::Keep);
    }

    #[test]
    fn older_targets_get_forms_they_have() {
        let low = |args: &[&str], level| for_older_target(Argv::from_args(args), level);
        let sent = |args: &[&str]| Lowered::Send(Argv::from_args(args));
        let script = SET_PXAT_SCRIPT;
        // SET … PXAT before 6.2: one EVAL, NX/XX kept, EXAT in ms.
        assert_eq!(
            low(&["SET", "k", "v", "NX", "PXAT", "1795658101048"], (6, 0)),
            sent(&["EVAL", script, "1", "k", "v", "1795658101048", "NX"])
        );
        assert_eq!(
            low(&["set", "k", "v", "exat", "1795658101"], (4, 0)),
            sent(&["EVAL", script, "1", "k", "v", "1795658101000"])
        );
        // From 6.2 on, and forms without an absolute expiry, unchanged.
        let pxat = ["SET", "k", "v", "PXAT", "1795658101048"];
        assert_eq!(low(&pxat, (6, 2)), sent(&pxat));
        assert_eq!(
            low(&["SET", "k", "v", "XX"], (5, 0)),
            sent(&["SET", "k", "v", "XX"])
        );
        // A syntax error the source gave stays one.
        let bad = ["SET", "k", "v", "PXAT", "1", "EX", "2"];
        assert_eq!(low(&bad, (6, 0)), sent(&bad));
        // Blocked pops' forms the target lacks: re-copied.
        assert_eq!(low(&["LMPOP", "1", "l", "LEFT"], (6, 2)), Lowered::Recopy);
        assert_eq!(
            low(&["LMOVE", "a", "b", "LEFT", "RIGHT"], (6, 0)),
            Lowered::Recopy
        );
        let lmove = ["LMOVE", "a", "b", "LEFT", "RIGHT"];
        assert_eq!(low(&lmove, (6, 2)), sent(&lmove));
        // RESTORE … ABSTTL toward Redis 4.0: re-copied.
        let restore = ["RESTORE", "k", "1795658101048", "p", "ABSTTL"];
        assert_eq!(low(&restore, (4, 0)), Lowered::Recopy);
        assert_eq!(low(&restore, (5, 0)), sent(&restore));
    }

    #[test]
    fn rewrite_getex() {
        assert_eq!(
            rw(&["GETEX", "k", "EX", "30"]),
            send(&["GETEX", "k", "PXAT", "1795658130048"])
        );
        assert_eq!(
            rw(&["getex", "k", "px", "30000"]),
            send(&["getex", "k", "PXAT", "1795658130048"])
        );
        assert_eq!(
            rw(&["GETEX", "k", "ex", "10", "ex", "20"]),
            send(&["GETEX", "k", "PXAT", "1795658120048"])
        );
        for args in [
            &["GETEX", "k"][..],
            &["GETEX", "k", "PERSIST"],
            &["GETEX", "k", "EXAT", "4102444800"],
            &["GETEX", "k", "PXAT", "4102444800000"],
            &["GETEX", "k", "EX", "10", "PX", "5"],
            &["GETEX", "k", "PERSIST", "EX", "5"],
            &["GETEX", "k", "EX", "5", "PERSIST"],
            &["GETEX", "k", "NX", "EX", "5"],
            &["GETEX", "k", "EX", "5", "GET"],
            &["GETEX", "k", "EX", "0"],
            &["GETEX", "k", "PX"],
            &["GETEX"],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_restore() {
        assert_eq!(
            rw(&["RESTORE", "k", "100000", "payload"]),
            send(&["RESTORE", "k", "1795658200048", "payload", "ABSTTL"])
        );
        assert_eq!(
            rw(&["restore", "k", "5", "payload", "replace", "IDLETIME", "3"]),
            send(&[
                "restore",
                "k",
                "1795658100053",
                "payload",
                "replace",
                "IDLETIME",
                "3",
                "ABSTTL"
            ])
        );
        assert_eq!(
            rw(&["RESTORE", "k", "5", "p", "FREQ", "200", "REPLACE"]),
            send(&[
                "RESTORE",
                "k",
                "1795658100053",
                "p",
                "FREQ",
                "200",
                "REPLACE",
                "ABSTTL"
            ])
        );
        for args in [
            &["RESTORE", "k", "0", "payload"][..],
            &["RESTORE", "k", "0", "payload", "REPLACE"],
            &["RESTORE", "k", "100", "payload", "ABSTTL"],
            &[
                "RESTORE",
                "k",
                "4102444800000",
                "payload",
                "absttl",
                "REPLACE",
            ],
            &["RESTORE", "k", "-5", "payload"],
            &["RESTORE", "k", "x", "payload"],
            &["RESTORE", "k", "9223372036854775807", "payload"],
            &["RESTORE", "k", "100", "payload", "IDLETIME"],
            &[
                "RESTORE", "k", "100", "payload", "IDLETIME", "1", "FREQ", "2",
            ],
            &["RESTORE", "k", "100", "payload", "BOGUS"],
            &["RESTORE", "k", "100"],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_blocking_pops() {
        assert_eq!(
            rw(&["BLPOP", "a", "b", "0"]),
            dirty(&["LMPOP", "2", "a", "b", "LEFT"])
        );
        assert_eq!(
            rw(&["brpop", "q", "1.5"]),
            dirty(&["LMPOP", "1", "q", "RIGHT"])
        );
        assert_eq!(
            rw(&["BZPOPMIN", "z1", "z2", "z3", "5"]),
            dirty(&["ZMPOP", "3", "z1", "z2", "z3", "MIN"])
        );
        assert_eq!(
            rw(&["BZPOPMAX", "z", "0"]),
            dirty(&["ZMPOP", "1", "z", "MAX"])
        );
        assert_eq!(
            rw(&["BLMOVE", "s", "d", "right", "LEFT", "0"]),
            dirty(&["LMOVE", "s", "d", "right", "LEFT"])
        );
        assert_eq!(
            rw(&["BRPOPLPUSH", "s", "d", "10"]),
            dirty(&["RPOPLPUSH", "s", "d"])
        );
        assert_eq!(
            rw(&["BLMPOP", "5", "1", "q", "LEFT", "COUNT", "2"]),
            dirty(&["LMPOP", "1", "q", "LEFT", "COUNT", "2"])
        );
        assert_eq!(
            rw(&["bzmpop", "0.1", "2", "a", "b", "max"]),
            dirty(&["ZMPOP", "2", "a", "b", "max"])
        );
        // Timeouts Redis accepts although they look odd: truncation to 0 ms, exponents, hex.
        for t in ["-0.0001", "1e2", ".5", "5.", "+3", "0x1p1", "-0"] {
            assert_eq!(
                rw(&["BLPOP", "q", t]),
                dirty(&["LMPOP", "1", "q", "LEFT"]),
                "timeout {t}"
            );
        }
    }

    #[test]
    fn rewrite_blocking_with_rejected_timeout_or_arity_passes_through_dirty() {
        for args in [
            &["BLPOP", "q", "-1"][..],
            &["BLPOP", "q", "abc"],
            &["BLPOP", "q", "inf"],
            &["BLPOP", "q", "nan"],
            &["BLPOP", "q", " 1"],
            &["BLPOP", "q", "1 "],
            &["BLPOP", "q", ""],
            &["BLPOP", "q", "1e300"],
            &["BLPOP", "q"],
            &["BLPOP"],
            &["BRPOP", "q", "1\0"],
            &["BZPOPMIN", "z", "-5"],
            &["BLMOVE", "s", "d", "LEFT", "RIGHT"],
            &["BLMOVE", "s", "d", "LEFT", "RIGHT", "-1"],
            &["BRPOPLPUSH", "s", "d"],
            &["BRPOPLPUSH", "s", "d", "x"],
            &["BLMPOP", "x", "1", "q", "LEFT"],
            &["BLMPOP", "1", "1", "q"],
            &["BZMPOP", "-1", "1", "z", "MIN"],
        ] {
            assert_eq!(rw(args), dirty(args), "{args:?}");
        }
    }

    #[test]
    fn rewrite_xreadgroup_drops_block() {
        assert_eq!(
            rw(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "5000",
                "COUNT",
                "1",
                "STREAMS",
                "s",
                ">"
            ]),
            dirty(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "COUNT",
                "1",
                "STREAMS",
                "s",
                ">"
            ])
        );
        assert_eq!(
            rw(&[
                "xreadgroup",
                "block",
                "0",
                "group",
                "g",
                "c",
                "noack",
                "Block",
                "10",
                "streams",
                "s",
                "BLOCK"
            ]),
            dirty(&[
                "xreadgroup",
                "group",
                "g",
                "c",
                "noack",
                "streams",
                "s",
                "BLOCK"
            ])
        );
        // A group and a consumer named BLOCK are names, not options.
        assert_eq!(
            rw(&["XREADGROUP", "GROUP", "BLOCK", "BLOCK", "STREAMS", "s", ">"]),
            dirty(&["XREADGROUP", "GROUP", "BLOCK", "BLOCK", "STREAMS", "s", ">"])
        );
        assert_eq!(
            rw(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"]),
            dirty(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"])
        );
        // Rejected timeouts fail on the target before blocking.
        for args in [
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "-1",
                "STREAMS",
                "s",
                ">",
            ][..],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "1.5",
                "STREAMS",
                "s",
                ">",
            ],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "x",
                "STREAMS",
                "s",
                ">",
            ],
            &["XREADGROUP"],
        ] {
            assert_eq!(rw(args), dirty(args), "{args:?}");
        }
        // A syntax error after BLOCK stays a syntax error without it.
        assert_eq!(
            rw(&[
                "XREADGROUP",
                "BLOCK",
                "1",
                "BOGUS",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                "s",
                ">"
            ]),
            dirty(&[
                "XREADGROUP",
                "BOGUS",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                "s",
                ">"
            ])
        );
        // XREAD is a read, but must not block replay either.
        assert_eq!(
            rw(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]),
            send(&["XREAD", "STREAMS", "s", "$"])
        );
    }

    #[test]
    fn rewrite_marks_server_choices_dirty() {
        assert_eq!(rw(&["SPOP", "s"]), dirty(&["SPOP", "s"]));
        assert_eq!(rw(&["spop", "s", "2"]), dirty(&["spop", "s", "2"]));
        for args in [
            &["XADD", "st", "*", "f", "v"][..],
            &["XADD", "st", "1-*", "f", "v"],
            &["XADD", "st", "MAXLEN", "~", "10", "*", "f", "v"],
            &["XADD", "st", "MAXLEN", "~", "10", "5-1", "f", "v"],
            &[
                "xadd",
                "st",
                "nomkstream",
                "minid",
                "~",
                "3",
                "limit",
                "5",
                "9-1",
                "f",
                "v",
            ],
            &["XADD", "st"],
            &["XTRIM", "st", "MAXLEN", "~", "10"],
            &["XTRIM", "st", "minid", "~", "5-0", "LIMIT", "10"],
            &["XTRIM", "st"],
            &["XCLAIM", "st", "g", "c", "0", "1-1"],
            &["XAUTOCLAIM", "st", "g", "c", "0", "0-0"],
        ] {
            assert_eq!(rw(args), dirty(args), "{args:?}");
        }
        for args in [
            &["XADD", "st", "5-1", "f", "v"][..],
            &["XADD", "st", "5", "f", "v"],
            &["XADD", "st", "MAXLEN", "10", "5-1", "f", "v"],
            &[
                "XADD",
                "st",
                "NOMKSTREAM",
                "MAXLEN",
                "=",
                "10",
                "5-1",
                "f",
                "v",
            ],
            &["XTRIM", "st", "MAXLEN", "10"],
            &["XTRIM", "st", "MINID", "=", "5-0"],
            // MAXLEN without a value is read as the id, an invalid one: fails on both sides.
            &["XADD", "st", "MAXLEN"],
            // reads with the tip are not writes
            &["SRANDMEMBER", "s"],
            &["ZRANDMEMBER", "z"],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_drops_framing_messages_and_migrate() {
        for args in [
            &["SELECT", "3"][..],
            &["select", "0"],
            &["MULTI"],
            &["EXEC"],
            &["DISCARD"],
            &["WATCH", "k"],
            &["UNWATCH"],
            &["PUBLISH", "ch", "m"],
            &["SPUBLISH", "ch", "m"],
            &["WAIT", "1", "0"],
        ] {
            assert_eq!(rw(args), Rewritten::skip(false), "{args:?}");
        }
        assert_eq!(
            rw(&["MIGRATE", "h", "6379", "k", "0", "1000"]),
            Rewritten::skip(true)
        );
    }

    #[test]
    fn rewrite_leaves_everything_else() {
        for args in [
            &["LPUSH", "q", "a"][..],
            &["lpush", "q", "a"],
            &["INCRBYFLOAT", "f", "0.1"],
            &["FLUSHDB"],
            &["FLUSHALL", "ASYNC"],
            &["XGROUP", "CREATE", "st", "g", "$"],
            &["LMPOP", "1", "q", "LEFT"],
            &["EVAL", "return 1", "0"],
            &["NOSUCHCOMMAND", "x"],
            &["A-VERY-LONG-MODULE-COMMAND-NAME", "x"],
            &[""],
            &[],
        ] {
            unchanged(args);
        }
    }

    #[test]
    fn rewrite_survives_extreme_timestamps() {
        for ts in [0, 999, u64::MAX] {
            let r = rewrite(
                CommandTable::builtin(),
                Argv::from_args(["SET", "k", "v", "EX", "10"]),
                ts,
            );
            assert!(r.argv.is_some());
        }
        assert_eq!(
            rewrite(
                CommandTable::builtin(),
                Argv::from_args(["SET", "k", "v", "EX", "10"]),
                999
            ),
            send(&["SET", "k", "v", "PXAT", "10000"])
        );
        assert_eq!(
            rewrite(
                CommandTable::builtin(),
                Argv::from_args(["EXPIRE", "k", "10"]),
                u64::MAX
            ),
            send(&["PEXPIREAT", "k", "18446744073719551"])
        );
        // A sum past i64 milliseconds is an error on the source: unchanged.
        assert_eq!(
            rewrite(
                CommandTable::builtin(),
                Argv::from_args(["PEXPIRE", "k", "9223372036854775807"]),
                0
            ),
            send(&["PEXPIREAT", "k", "9223372036854775807"])
        );
        unchanged(&["PEXPIRE", "k", "9223372036854775807"]);
    }

    fn word() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        const WORDS: &[&str] = &[
            "EX",
            "px",
            "EXAT",
            "PXAT",
            "NX",
            "xx",
            "GET",
            "KEEPTTL",
            "PERSIST",
            "BLOCK",
            "count",
            "GROUP",
            "STREAMS",
            "NOACK",
            "MAXLEN",
            "MINID",
            "LIMIT",
            "~",
            "=",
            "*",
            "1-*",
            "5-1",
            "ABSTTL",
            "REPLACE",
            "IDLETIME",
            "FREQ",
            "LEFT",
            "RIGHT",
            "MIN",
            "MAX",
            "GT",
            "0",
            "-0",
            "1",
            "-1",
            "100",
            "1.5",
            "0x1p1",
            "inf",
            "nan",
            "",
            "EX\0",
            "010",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775",
        ];
        prop_oneof![
            proptest::sample::select(WORDS).prop_map(|w| w.as_bytes().to_vec()),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..6),
        ]
    }

    proptest::proptest! {
        #[test]
        fn rewrite_never_panics_and_never_emits_a_new_blocking_command(
            name in proptest::sample::select(&[
                "SET", "set", "GETEX", "SETEX", "PSETEX", "EXPIRE", "pexpire", "HEXPIRE", "hpexpire", "RESTORE", "BLPOP",
                "BRPOP", "BZPOPMIN", "BZPOPMAX", "BLMOVE", "BRPOPLPUSH", "BLMPOP", "bzmpop",
                "XREADGROUP", "XREAD", "XADD", "XTRIM", "MIGRATE", "SELECT", "SPOP", "LPUSH",
            ][..]),
            rest in proptest::collection::vec(word(), 0..9),
            ts_us in proptest::prelude::any::<u64>(),
        ) {
            let table = CommandTable::builtin();
            let mut input = Argv::new();
            input.push(name.as_bytes());
            for a in &rest {
                input.push(a);
            }
            let out = rewrite(table, input.clone(), ts_us);
            if let Some(out) = out.argv.filter(|o| *o != input) {
                let blocking = table
                    .lookup(&out)
                    .is_some_and(|s| s.flags.contains(CommandFlags::BLOCKING));
                // Before STREAMS and without GROUP (whose names may be anything) every
                // argument is an option or a value, never the word BLOCK after a rewrite.
                let opts: Vec<&[u8]> = out
                    .iter()
                    .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                    .collect();
                let xread_block = out.name().starts_with(b"XREAD")
                    && opts.iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
                    && !opts.iter().any(|a| a.eq_ignore_ascii_case(b"GROUP"));
                proptest::prop_assert!(!blocking || out.name().starts_with(b"XREAD"), "{out:?}");
                proptest::prop_assert!(!xread_block, "{input:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn parse_ll_matches_string2ll() {
        assert_eq!(parse_ll(b"0"), Some(0));
        assert_eq!(parse_ll(b"42"), Some(42));
        assert_eq!(parse_ll(b"-42"), Some(-42));
        assert_eq!(parse_ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"1\0",
        ] {
            assert_eq!(parse_ll(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
