//! Declarative rewrite rules (`rename_prefix`, `move_db`, `drop_commands`) and
//! [`apply_rules`], the pure function that applies them with the key filter to one command.
//!
//! ## Behavior
//! [`apply_rules`] decides in this order, always on the command as the source ran it:
//! 1. `drop_commands` names the command (or `NAME|SUB`) → [`Applied::Dropped`].
//! 2. Its db is not in `keys.dbs` → [`Applied::Excluded`].
//! 3. It has keys and every one fails `include`/`exclude` → `Excluded`. A multi-key command with
//!    some keys allowed and some not is kept whole *by this function*, but replay never gets
//!    here with one: the stitcher sends nothing for it and re-copies its allowed keys instead
//!    ([`crate::command::mixed_keys`]; `ferry check` reports "not sent; re-copies …"), since the
//!    excluded keys are missing on the target and splitting the command would change what it
//!    does. Keyless commands (`FLUSHDB`, `PUBLISH`, `SWAPDB`) pass the key patterns; drop them
//!    explicitly if they must not reach the target.
//! 4. `keys.types` is set and the command's group implies a type not in it (`HSET` → `hash`)
//!    → `Excluded`; generic commands (`DEL`, `EXPIRE`, `RENAME`) pass.
//! 5. Every key argument (all positions the command table reports, so `RENAME`, `LMOVE`,
//!    `SUNIONSTORE`, `MSET` and the keys of `EVAL` alike) is renamed by the first
//!    `rename_prefix` whose `from` it starts with; the db, and the db arguments of `MOVE`,
//!    `COPY … DB`, `SWAPDB` and `SELECT`, by the first `move_db` whose `from` it equals. First
//!    match wins, so rules can swap two dbs or two prefixes.
//!
//! Keys that a script builds inside its body, and `SORT … BY/GET` patterns, are not renamed:
//! their writes reach `MONITOR` as separate `[db lua]` lines, which are renamed one by one.

use crate::command::{Argv, CommandTable};

use super::filter::{KeyFilter, type_of_group};

/// One declarative rewrite rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// Keys starting with `from` get `to` in its place.
    RenamePrefix { from: Vec<u8>, to: Vec<u8> },
    /// Db `from` becomes db `to` on the target.
    MoveDb { from: u32, to: u32 },
    /// Commands never sent to the target: upper-case names, `NAME` or `NAME|SUB`.
    DropCommands(Vec<String>),
}

/// What [`apply_rules`] decided for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Send this (possibly renamed and moved) command.
    Keep { db: u32, argv: Argv },
    /// The key filter leaves the command out.
    Excluded,
    /// A `drop_commands` rule names the command.
    Dropped,
}

/// Applies the filter and the rules to one command; see the module doc for the order.
pub fn apply_rules(
    rules: &[Rule],
    filter: &KeyFilter,
    table: &CommandTable,
    db: u32,
    mut argv: Argv,
) -> Applied {
    if argv.is_empty() {
        return Applied::Excluded;
    }
    if dropped(rules, &argv) {
        return Applied::Dropped;
    }
    if !filter.allows_db(db) {
        return Applied::Excluded;
    }
    // Key extraction is the costly part; plans without key patterns or renames skip it.
    let renames = rules.iter().any(|r| matches!(r, Rule::RenamePrefix { .. }));
    let keys = if renames || filter.filters_keys() {
        table.keys(&argv)
    } else {
        Vec::new()
    };
    if filter.filters_keys()
        && !keys.is_empty()
        && !keys
            .iter()
            .any(|k| filter.allows_key(argv.get(k.pos).unwrap_or_default()))
    {
        return Applied::Excluded;
    }
    if filter.types.is_some()
        && let Some(t) = table.lookup(&argv).and_then(|s| type_of_group(&s.group))
        && !filter.allows_type(t)
    {
        return Applied::Excluded;
    }
    let mut renamed = Vec::new();
    for k in &keys {
        let Some(key) = argv.get(k.pos) else { continue };
        if let Some(new) = rename_key(rules, key) {
            renamed.push((k.pos, new));
        }
    }
    for (pos, new) in renamed {
        argv.set(pos, &new);
    }
    if rules.iter().any(|r| matches!(r, Rule::MoveDb { .. })) {
        move_db_args(rules, &mut argv);
    }
    Applied::Keep {
        db: map_db(rules, db),
        argv,
    }
}

/// The key after the first matching `rename_prefix`, or `None` when no rule applies.
pub fn rename_key(rules: &[Rule], key: &[u8]) -> Option<Vec<u8>> {
    rules.iter().find_map(|r| match r {
        Rule::RenamePrefix { from, to } if key.starts_with(from) => {
            let mut new = Vec::with_capacity(to.len() + key.len() - from.len());
            new.extend_from_slice(to);
            new.extend_from_slice(&key[from.len()..]);
            Some(new)
        }
        _ => None,
    })
}

/// The db after the first matching `move_db`.
pub fn map_db(rules: &[Rule], db: u32) -> u32 {
    rules
        .iter()
        .find_map(|r| match r {
            Rule::MoveDb { from, to } if *from == db => Some(*to),
            _ => None,
        })
        .unwrap_or(db)
}

/// True when a `drop_commands` rule names the command `argv` (its name, or `NAME|SUB`).
pub fn dropped(rules: &[Rule], argv: &Argv) -> bool {
    rules.iter().any(|r| drops(r, argv))
}

fn drops(rule: &Rule, argv: &Argv) -> bool {
    let Rule::DropCommands(names) = rule else {
        return false;
    };
    names.iter().any(|n| match n.split_once('|') {
        None => argv.name().eq_ignore_ascii_case(n.as_bytes()),
        Some((top, sub)) => {
            argv.name().eq_ignore_ascii_case(top.as_bytes())
                && argv
                    .get(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case(sub.as_bytes()))
        }
    })
}

/// Rewrites the db-number arguments of the commands that take one.
fn move_db_args(rules: &[Rule], argv: &mut Argv) {
    let name = argv.name();
    let positions: Vec<usize> = if name.eq_ignore_ascii_case(b"MOVE") {
        vec![2]
    } else if name.eq_ignore_ascii_case(b"SELECT") {
        vec![1]
    } else if name.eq_ignore_ascii_case(b"SWAPDB") {
        vec![1, 2]
    } else if name.eq_ignore_ascii_case(b"COPY") {
        (3..argv.len())
            .filter(|&i| argv.get(i).is_some_and(|a| a.eq_ignore_ascii_case(b"DB")))
            .map(|i| i + 1)
            .collect()
    } else {
        return;
    };
    for pos in positions {
        let Some(db) = argv
            .get(pos)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let new = map_db(rules, db);
        if new != db {
            argv.set(pos, new.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Glob;

    fn keep(a: Applied) -> (u32, String) {
        match a {
            Applied::Keep { db, argv } => (db, argv.quoted()),
            other => panic!("expected Keep, got {other:?}"),
        }
    }

    fn run(rules: &[Rule], filter: &KeyFilter, db: u32, args: &[&str]) -> Applied {
        apply_rules(
            rules,
            filter,
            CommandTable::builtin(),
            db,
            Argv::from_args(args),
        )
    }

    fn rename(from: &str, to: &str) -> Rule {
        Rule::RenamePrefix {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn renames_every_key_position() {
        let rules = [rename("fs:", "freshservice:")];
        let all = KeyFilter::everything();
        assert_eq!(
            keep(run(&rules, &all, 0, &["RENAME", "fs:a", "fs:b"])).1,
            r#""RENAME" "freshservice:a" "freshservice:b""#
        );
        assert_eq!(
            keep(run(
                &rules,
                &all,
                0,
                &["MSET", "fs:a", "fs:x", "other", "fs:y"]
            ))
            .1,
            r#""MSET" "freshservice:a" "fs:x" "other" "fs:y""#
        );
        assert_eq!(
            keep(run(
                &rules,
                &all,
                0,
                &["EVAL", "return 1", "2", "fs:k", "x", "fs:arg"]
            ))
            .1,
            r#""EVAL" "return 1" "2" "freshservice:k" "x" "fs:arg""#
        );
    }

    #[test]
    fn first_match_wins_so_swaps_work() {
        let rules = [
            rename("a:", "b:"),
            rename("b:", "a:"),
            Rule::MoveDb { from: 0, to: 1 },
            Rule::MoveDb { from: 1, to: 0 },
        ];
        let all = KeyFilter::everything();
        assert_eq!(
            keep(run(&rules, &all, 1, &["RENAME", "a:1", "b:1"])),
            (0, r#""RENAME" "b:1" "a:1""#.to_string())
        );
        assert_eq!(
            keep(run(&rules, &all, 0, &["MOVE", "k", "1"])),
            (1, r#""MOVE" "k" "0""#.to_string())
        );
        assert_eq!(
            keep(run(
                &rules,
                &all,
                0,
                &["COPY", "k", "k2", "DB", "0", "REPLACE"]
            ))
            .1,
            r#""COPY" "k" "k2" "DB" "1" "REPLACE""#
        );
    }

    #[test]
    fn filter_and_drop() {
        let rules = [Rule::DropCommands(vec![
            "PUBLISH".into(),
            "SCRIPT|FLUSH".into(),
        ])];
        let f = KeyFilter::new(
            vec![Glob::new(b"fs:*")],
            vec![Glob::new(b"fs:tmp:*")],
            Some(vec![0]),
            Some(vec!["string".into(), "list".into()]),
        );
        assert_eq!(run(&rules, &f, 0, &["publish", "c", "m"]), Applied::Dropped);
        assert_eq!(run(&rules, &f, 0, &["SCRIPT", "flush"]), Applied::Dropped);
        assert!(matches!(
            run(&rules, &f, 0, &["SCRIPT", "LOAD", "x"]),
            Applied::Keep { .. }
        ));
        assert_eq!(run(&rules, &f, 1, &["SET", "fs:1", "v"]), Applied::Excluded);
        assert_eq!(
            run(&rules, &f, 0, &["SET", "other", "v"]),
            Applied::Excluded
        );
        assert_eq!(
            run(&rules, &f, 0, &["SET", "fs:tmp:1", "v"]),
            Applied::Excluded
        );
        assert_eq!(
            run(&rules, &f, 0, &["HSET", "fs:1", "f", "v"]),
            Applied::Excluded
        );
        // Mixed: kept whole here (replay re-copies instead; see `command::mixed_keys`).
        assert!(matches!(
            run(&rules, &f, 0, &["RENAME", "fs:1", "other"]),
            Applied::Keep { .. }
        ));
        assert!(matches!(
            run(&rules, &f, 0, &["DEL", "fs:1"]),
            Applied::Keep { .. }
        ));
        assert!(matches!(
            run(&rules, &f, 0, &["FLUSHDB"]),
            Applied::Keep { .. }
        ));
        assert_eq!(run(&rules, &f, 0, &[]), Applied::Excluded);
    }
}
