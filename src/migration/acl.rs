//! The permissions ferry's user needs on each side (docs/security.md), checked before anything
//! is copied: `ferry preflight` reports the missing ones, and a run refuses to start without
//! them.
//!
//! ## Behavior
//! Redis checks a command's ACL before running it, so each probe is the command itself with
//! arguments that make it harmless when it is allowed: a read of a key that does not exist, an
//! `EXEC` without `MULTI`, a `RESTORE` of an invalid payload, `SET … XX` of a missing key, a
//! `CLIENT KILL` of an id no client has, a pause of 0 ms. Only a `NOPERM` reply counts as missing; any
//! other error means the command is allowed. `MONITOR` and `PSUBSCRIBE` are probed on
//! connections of their own, closed at once. `CLIENT UNPAUSE` has no harmless form (it would end
//! someone else's pause) and is not probed; docs/security.md lists it with `CLIENT PAUSE`.

use crate::net::{Endpoint, Engine, NetError};

/// The key the probes read (and never create): no application owns it.
const PROBE_KEY: &str = "ferry:acl-probe:{never-created}";

/// `i64::MAX`: client ids count up from 1, so none has it (and 7.0's range check accepts it).
const NO_CLIENT_ID: &str = "9223372036854775807";

/// Which side a user is on: the commands differ (the source is only read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// Both sides checked, as a run starts: the first side with a missing permission is an error
/// naming it.
pub async fn check_both(source: &Endpoint, target: &Endpoint) -> Result<(), NetError> {
    for (ep, side) in [(source, Side::Source), (target, Side::Target)] {
        let engine = Engine::detect(ep).await?;
        let missing = missing_permissions(ep, side, engine).await?;
        if !missing.is_empty() {
            return Err(NetError::Permission {
                endpoint: ep.redacted().to_string(),
                side: if side == Side::Source {
                    "source"
                } else {
                    "target"
                },
                message: describe_missing(&missing),
            });
        }
    }
    Ok(())
}

/// The ACL rule (`+name`) of every command ferry needs on `side` that the user of `ep` may not
/// run, in probe order; empty when everything is allowed.
pub async fn missing_permissions(
    ep: &Endpoint,
    side: Side,
    engine: Engine,
) -> Result<Vec<String>, NetError> {
    let mut con = ep.control().await?;
    let k = PROBE_KEY;
    let mut probes: Vec<(&str, Vec<&str>)> = vec![
        ("ping", vec!["PING"]),
        ("info", vec!["INFO", "server"]),
        ("select", vec!["SELECT", "0"]),
        ("echo", vec!["ECHO", "ferry"]),
        ("client|id", vec!["CLIENT", "ID"]),
        (
            "client|setname",
            vec!["CLIENT", "SETNAME", "ferry-acl-probe"],
        ),
        ("client|list", vec!["CLIENT", "LIST", "TYPE", "pubsub"]),
        ("scan", vec!["SCAN", "0", "COUNT", "1"]),
        ("dump", vec!["DUMP", k]),
        ("exists", vec!["EXISTS", k]),
        ("type", vec!["TYPE", k]),
        ("smembers", vec!["SMEMBERS", k]),
        ("exec", vec!["EXEC"]),
    ];
    if engine.has_pexpiretime() {
        probes.push(("pexpiretime", vec!["PEXPIRETIME", k]));
    } else {
        probes.push(("pttl", vec!["PTTL", k]));
        probes.push(("time", vec!["TIME"]));
    }
    if engine.has_pause_write() {
        probes.push(("client|info", vec!["CLIENT", "INFO"]));
    }
    if engine.has_functions() {
        probes.push(("function|list", vec!["FUNCTION", "LIST", "LIBRARYNAME", k]));
    }
    match side {
        Side::Source => {
            if engine.has_functions() {
                probes.push(("function|dump", vec!["FUNCTION", "DUMP"]));
            }
            if engine.has_pause_write() {
                // A pause that ends now: it never shortens a pause in effect.
                probes.push(("client|pause", vec!["CLIENT", "PAUSE", "0", "WRITE"]));
            }
            // An id no client has. Not `ID 0`: before 7.0, id 0 means "no id filter", and the
            // probe would disconnect every client.
            probes.push(("client|kill", vec!["CLIENT", "KILL", "ID", NO_CLIENT_ID]));
        }
        Side::Target => {
            probes.push(("restore", vec!["RESTORE", k, "0", "not-a-dump-payload"]));
            probes.push(("set", vec!["SET", k, "ferry", "XX"]));
            probes.push(("del", vec!["DEL", k]));
            probes.push(("pexpireat", vec!["PEXPIREAT", k, "1"]));
            if !engine.has_set_pxat() {
                // `SET … PXAT` goes as one EVAL of SET and PEXPIREAT before 6.2.
                probes.push(("eval", vec!["EVAL", "return 1", "0"]));
            }
        }
    }
    let mut missing = Vec::new();
    for (rule, args) in &probes {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        match cmd.query_async::<redis::Value>(&mut con).await {
            Err(e) if e.code() == Some("NOPERM") => missing.push(rule.to_string()),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                return Err(ep.classify(&e));
            }
            _ => {}
        }
    }
    // Capture's stream and the eviction events each hold a connection of their own.
    let own: [(&str, &[&[u8]]); 2] = [
        ("monitor", &[b"MONITOR"]),
        ("psubscribe", &[b"PSUBSCRIBE", b"__keyevent@*__:evicted"]),
    ];
    for (rule, args) in own {
        if side == Side::Target && rule == "psubscribe" {
            continue;
        }
        let mut raw = ep.raw().await?;
        raw.send(args).await?;
        let denied = match raw.read_array(rule).await {
            Err(NetError::Server { message, .. }) => message.starts_with("NOPERM"),
            // `MONITOR` answers `+OK`, which is not an array: allowed.
            Err(NetError::Io { .. }) | Ok(_) => false,
            Err(e) => return Err(e),
        };
        if denied {
            missing.push(rule.to_string());
        }
    }
    Ok(missing)
}

/// The one-line summary: the first rule, the count, and the whole grant to add.
pub fn describe_missing(missing: &[String]) -> String {
    let grant: Vec<String> = missing.iter().map(|m| format!("+{m}")).collect();
    let more = match missing.len() {
        0 | 1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    format!(
        "the user may not run {}{more} (NOPERM); grant `{}` (docs/security.md lists each side's ACL)",
        missing
            .first()
            .map(|m| m.to_uppercase().replace('|', " "))
            .unwrap_or_default(),
        grant.join(" ")
    )
}
