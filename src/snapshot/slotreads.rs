//! Fenced reads on a primary of a Redis Cluster, which refuses a transaction over keys of
//! several slots even when it serves them all (`CROSSSLOT`, docs/redis-behaviour.md §13): the
//! keys are grouped by slot and read with one `MULTI; DUMP k; <expiry> k; …; EXEC` per slot, all
//! pipelined in one round trip. Shared by `ferry snapshot` and `ferry backup`.

use std::collections::BTreeMap;

use redis::Value;

use super::expiry::ExpiryRead;
use crate::net::cluster::slot_number;

/// `keys` grouped by hash slot, in slot order, each group in the order given.
pub fn by_slot<K: AsRef<[u8]>>(keys: impl IntoIterator<Item = K>) -> Vec<Vec<K>> {
    let mut groups: BTreeMap<u16, Vec<K>> = BTreeMap::new();
    for k in keys {
        groups.entry(slot_number(k.as_ref())).or_default().push(k);
    }
    groups.into_values().collect()
}

/// One transaction per group: `DUMP` and the expiry read of each key, then what
/// [`ExpiryRead::finish`] adds.
pub fn pipeline<K: AsRef<[u8]>>(groups: &[Vec<K>], expiry: ExpiryRead) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for group in groups {
        pipe.cmd("MULTI");
        for k in group {
            pipe.cmd("DUMP").arg(k.as_ref());
            expiry.push(&mut pipe, k.as_ref());
        }
        expiry.finish(&mut pipe);
        pipe.cmd("EXEC");
    }
    pipe
}

/// Each transaction's `EXEC` reply from the replies to [`pipeline`] (`OK` for `MULTI`, `QUEUED`
/// per read, then `EXEC`'s array); `sizes` are the groups' key counts. An error says which
/// reply was not what a transaction answers.
pub fn exec_replies(
    replies: Vec<Value>,
    sizes: impl IntoIterator<Item = usize>,
    expiry: ExpiryRead,
) -> Result<Vec<Vec<Value>>, String> {
    let mut replies = replies.into_iter();
    let mut out = Vec::new();
    for n in sizes {
        let queued = 1 + 2 * n + expiry.extra_replies();
        if let Some(e) = replies.by_ref().take(queued).find_map(|v| server_error(&v)) {
            return Err(format!("MULTI on the source: {e}"));
        }
        match replies.next() {
            Some(Value::Array(a)) => out.push(a),
            Some(other) => {
                let what = server_error(&other).unwrap_or_else(|| format!("{other:?}"));
                return Err(format!("EXEC on the source: {what}"));
            }
            None => return Err("EXEC on the source: no reply".into()),
        }
    }
    Ok(out)
}

fn server_error(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(e) => Some(format!("{} {}", e.code(), e.details().unwrap_or_default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_slot_and_replies_split_by_transaction() {
        let groups = by_slot(["{a}1", "b", "{a}2"]);
        assert_eq!(groups.len(), 2);
        assert!(groups.contains(&vec!["{a}1", "{a}2"]));
        let ok = Value::Okay;
        let queued = || Value::SimpleString("QUEUED".into());
        let exec = |n: i64| Value::Array(vec![Value::Nil, Value::Int(n)]);
        let replies = vec![
            ok.clone(),
            queued(),
            queued(),
            exec(1),
            ok,
            queued(),
            queued(),
            exec(2),
        ];
        let split = exec_replies(replies, [1, 1], ExpiryRead::Pexpiretime).unwrap();
        assert_eq!(
            split,
            [
                vec![Value::Nil, Value::Int(1)],
                vec![Value::Nil, Value::Int(2)]
            ]
        );
        let err = exec_replies(vec![Value::Okay], [1], ExpiryRead::Pexpiretime).unwrap_err();
        assert!(err.contains("no reply"), "{err}");
    }
}
