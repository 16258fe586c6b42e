//! Reads a server's `COMMAND` and `COMMAND DOCS` replies into [`CommandSpec`]s.
//!
//! Both RESP2 (flat key/value arrays) and RESP3 (maps) replies are accepted, so the loader does
//! not care how the connection was negotiated.
//!
//! Servers before Redis 7.0 answer `COMMAND` with 6 fields per command (7 from 6.0, with ACL
//! categories) and no key specs: their keys are `first`/`last`/`step` positions, and
//! `movablekeys` commands find theirs with per-command code, the same rules ferry's key
//! extraction falls back to (`KeyProc`). Such an entry becomes one `index`/`range` key spec with
//! no key flags (read and written, the conservative reading), no key spec for a movable
//! command, and the tips Redis 7.0 turned the `random` / `sort_for_script` flags into.

use redis::Value;

use super::spec::{BeginSearch, CommandFlags, CommandSpec, FindKeys, KeyFlags, KeySpec};
use super::{CommandTable, TableOrigin};

/// Why a server's table could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The server refused `COMMAND` (renamed, or not allowed for this user).
    #[error("the server refused COMMAND: {0}")]
    Refused(String),
    /// The reply has a shape ferry does not understand.
    #[error("unexpected COMMAND reply: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> TableError {
    TableError::Malformed(what.into())
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other)?.parse().ok(),
    }
}

fn as_list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// Key/value pairs of a RESP3 map or a RESP2 flat array.
fn as_pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| Some((as_str(k)?, v))).collect(),
        Value::Array(a) if a.len() % 2 == 0 => {
            a.chunks(2).map(|c| Some((as_str(&c[0])?, &c[1]))).collect()
        }
        _ => None,
    }
}

/// Key/value pairs borrowed from a reply.
type Pairs<'v> = Vec<(String, &'v Value)>;

fn get<'v>(pairs: &[(String, &'v Value)], key: &str) -> Option<&'v Value> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn strings(v: &Value) -> Vec<String> {
    as_list(v)
        .map(|l| l.iter().filter_map(as_str).collect())
        .unwrap_or_default()
}

fn int_field(pairs: &[(String, &Value)], key: &str, ctx: &str) -> Result<i32, TableError> {
    get(pairs, key)
        .and_then(as_int)
        .map(|i| i as i32)
        .ok_or_else(|| malformed(format!("{ctx}: missing integer '{key}'")))
}

fn parse_key_spec(v: &Value, ctx: &str) -> Result<KeySpec, TableError> {
    let pairs = as_pairs(v).ok_or_else(|| malformed(format!("{ctx}: key spec is not a map")))?;
    let flags = get(&pairs, "flags")
        .map(strings)
        .unwrap_or_default()
        .join(" ");
    let flags = KeyFlags::parse(&flags);
    let section = |name: &str| -> Result<(String, Pairs<'_>), TableError> {
        let sec = get(&pairs, name)
            .and_then(as_pairs)
            .ok_or_else(|| malformed(format!("{ctx}: missing '{name}'")))?;
        let ty = get(&sec, "type").and_then(as_str).unwrap_or_default();
        let spec = get(&sec, "spec").and_then(as_pairs).unwrap_or_default();
        Ok((ty, spec))
    };
    let (bs_type, bs) = section("begin_search")?;
    let begin = match bs_type.as_str() {
        "index" => BeginSearch::Index(int_field(&bs, "index", ctx)?),
        "keyword" => BeginSearch::Keyword {
            keyword: get(&bs, "keyword")
                .and_then(as_str)
                .ok_or_else(|| malformed(format!("{ctx}: keyword without 'keyword'")))?,
            startfrom: int_field(&bs, "startfrom", ctx)?,
        },
        _ => BeginSearch::Unknown,
    };
    let (fk_type, fk) = section("find_keys")?;
    let find = match fk_type.as_str() {
        "range" => FindKeys::Range {
            lastkey: int_field(&fk, "lastkey", ctx)?,
            keystep: int_field(&fk, "keystep", ctx)?,
            limit: int_field(&fk, "limit", ctx)?,
        },
        "keynum" => FindKeys::Keynum {
            keynumidx: int_field(&fk, "keynumidx", ctx)?,
            firstkey: int_field(&fk, "firstkey", ctx)?,
            keystep: int_field(&fk, "keystep", ctx)?,
        },
        _ => FindKeys::Unknown,
    };
    Ok(KeySpec { flags, begin, find })
}

/// Parses one entry of a `COMMAND` / `COMMAND INFO` reply.
pub(crate) fn parse_command(v: &Value) -> Result<CommandSpec, TableError> {
    let f = as_list(v).ok_or_else(|| malformed("command entry is not an array"))?;
    if (6..10).contains(&f.len()) {
        return parse_legacy_command(f);
    }
    if f.len() < 10 {
        return Err(malformed(format!(
            "command entry has {} fields, expected 6 or 7 (before Redis 7.0) or 10",
            f.len()
        )));
    }
    let name = as_str(&f[0])
        .ok_or_else(|| malformed("command name is not a string"))?
        .to_ascii_lowercase();
    let arity = as_int(&f[1]).ok_or_else(|| malformed(format!("{name}: bad arity")))? as i32;
    let flags = CommandFlags::parse(&strings(&f[2]).join(" "));
    let key_specs = as_list(&f[8])
        .unwrap_or_default()
        .iter()
        .map(|k| parse_key_spec(k, &name))
        .collect::<Result<_, _>>()?;
    let mut subcommands: Vec<CommandSpec> = as_list(&f[9])
        .unwrap_or_default()
        .iter()
        .map(parse_command)
        .collect::<Result<_, _>>()?;
    // The server lists subcommands in hash order, which changes from run to run.
    subcommands.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CommandSpec {
        name,
        arity,
        flags,
        acl_categories: strings(&f[6]),
        tips: strings(&f[7]),
        key_specs,
        subcommands,
        group: String::new(),
    })
}

/// Parses one entry of a `COMMAND` reply from before Redis 7.0: name, arity, flags, first key,
/// last key, step (and ACL categories from 6.0).
fn parse_legacy_command(f: &[Value]) -> Result<CommandSpec, TableError> {
    let name = as_str(&f[0])
        .ok_or_else(|| malformed("command name is not a string"))?
        .to_ascii_lowercase();
    let int = |i: usize, what: &str| {
        as_int(&f[i])
            .map(|n| n as i32)
            .ok_or_else(|| malformed(format!("{name}: bad {what}")))
    };
    let arity = int(1, "arity")?;
    let names = strings(&f[2]);
    let flags = CommandFlags::parse(&names.join(" "));
    let (first, last, step) = (
        int(3, "first key")?,
        int(4, "last key")?,
        int(5, "key step")?,
    );
    let mut tips = Vec::new();
    if names.iter().any(|n| n == "random") {
        tips.push("nondeterministic_output".to_string());
    }
    if names.iter().any(|n| n == "sort_for_script") {
        tips.push("nondeterministic_output_order".to_string());
    }
    let key_specs = if first > 0 && !flags.contains(CommandFlags::MOVABLEKEYS) {
        vec![KeySpec {
            flags: KeyFlags::empty(),
            begin: BeginSearch::Index(first),
            find: FindKeys::Range {
                // 7.0's range counts from the first key; a negative last counts from the end.
                lastkey: if last >= 0 { last - first } else { last },
                keystep: step.max(1),
                limit: 0,
            },
        }]
    } else {
        Vec::new()
    };
    Ok(CommandSpec {
        name,
        arity,
        flags,
        acl_categories: f.get(6).map(strings).unwrap_or_default(),
        tips,
        key_specs,
        subcommands: Vec::new(),
        group: String::new(),
    })
}

/// Parses a whole `COMMAND` reply, adding `group` from a `COMMAND DOCS` reply when given.
pub fn parse_command_reply(
    command: &Value,
    docs: Option<&Value>,
) -> Result<Vec<CommandSpec>, TableError> {
    let mut specs: Vec<CommandSpec> = as_list(command)
        .ok_or_else(|| malformed("COMMAND reply is not an array"))?
        .iter()
        .map(parse_command)
        .collect::<Result<_, _>>()?;
    if let Some(docs) = docs.and_then(as_pairs) {
        for spec in &mut specs {
            let doc = get(&docs, &spec.name).and_then(as_pairs);
            if let Some(group) = doc
                .as_deref()
                .and_then(|d| get(d, "group"))
                .and_then(as_str)
            {
                spec.group = group.clone();
                for sub in &mut spec.subcommands {
                    sub.group = group.clone();
                }
            }
        }
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(specs)
}

impl CommandTable {
    /// Loads the table of the server behind `con` from `COMMAND` and `COMMAND DOCS`.
    ///
    /// `COMMAND DOCS` is optional: only the groups are lost without it.
    pub async fn load<C: redis::aio::ConnectionLike>(
        con: &mut C,
    ) -> Result<CommandTable, TableError> {
        let command: Value = redis::cmd("COMMAND")
            .query_async(con)
            .await
            .map_err(|e| TableError::Refused(e.to_string()))?;
        let docs: Option<Value> = redis::cmd("COMMAND")
            .arg("DOCS")
            .query_async(con)
            .await
            .ok();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(con)
            .await
            .unwrap_or_default();
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let specs = parse_command_reply(&command, docs.as_ref())?;
        Ok(CommandTable::from_specs(
            specs,
            TableOrigin::Server { version },
        ))
    }
}
