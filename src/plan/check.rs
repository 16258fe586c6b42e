//! `ferry check`: dry-runs a plan's filter, rules and `on_command` over sample commands, without
//! network, and says what would happen to each.
//!
//! ## Behavior
//! Samples are, in order of preference: the ones passed in, the plan's `check.samples`, and
//! [`builtin_samples`] (about twenty representative writes over several dbs and prefixes).
//! Each becomes one [`CheckLine`]; plan-level oddities (a dropped command name Redis does not
//! know, a `move_db` from a db the filter excludes) become warnings.
//!
//! The dry run decides as replay does: first whether the command mixes keys the plan migrates
//! with keys it leaves out ([`mixed_keys`], the stitcher's own test: such a command is not sent
//! and its migrated keys are re-copied), then [`apply_rules`] and `on_command`.

use std::fmt;

use super::error::{HookError, suggest};
use super::{Applied, HookErrorPolicy, HookOutcome, Plan, Rule, apply_rules};
use crate::command::mixed_keys;
use crate::command::{Argv, CommandTable};

/// What a dry run found for one sample.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CheckOutcome {
    /// Sent to the target as `db`/`argv`; `changes` describes what the rules changed.
    Kept {
        db: u32,
        argv: Argv,
        changes: Vec<String>,
    },
    /// Left out by the key filter.
    Excluded,
    /// Not sent: its keys mix ones the plan migrates with ones it leaves out, so replay
    /// re-copies these (source) keys from the source instead.
    Recopied(Vec<Vec<u8>>),
    /// Dropped by a `drop_commands` rule.
    Dropped,
    /// `on_command` replaced it with these commands.
    HookReplaced(Vec<(u32, Argv)>),
    /// `on_command` dropped it.
    HookDropped,
    /// `on_command` failed; `skipped` tells whether the plan's policy would drop and go on.
    HookError { error: HookError, skipped: bool },
}

/// One sample and what would happen to it.
#[derive(Debug, Clone)]
pub struct CheckLine {
    /// The sample's db.
    pub db: u32,
    /// The sample command.
    pub input: Argv,
    /// What would happen.
    pub outcome: CheckOutcome,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "db{} {}: ", self.db, self.input.quoted())?;
        match &self.outcome {
            CheckOutcome::Kept { changes, .. } if changes.is_empty() => f.write_str("kept"),
            CheckOutcome::Kept { db, argv, changes } => {
                write!(
                    f,
                    "kept as db{db} {} ({})",
                    argv.quoted(),
                    changes.join(", ")
                )
            }
            CheckOutcome::Excluded => f.write_str("excluded by keys"),
            CheckOutcome::Recopied(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| crate::escape::quote(k)).collect();
                write!(
                    f,
                    "not sent (it mixes keys the plan migrates with keys it leaves out); re-copies {}",
                    keys.join(", ")
                )
            }
            CheckOutcome::Dropped => f.write_str("dropped by rewrite (drop_commands)"),
            CheckOutcome::HookReplaced(cmds) => {
                let list: Vec<String> = cmds
                    .iter()
                    .map(|(db, argv)| format!("db{db} {}", argv.quoted()))
                    .collect();
                write!(f, "on_command sends {}", list.join("; "))
            }
            CheckOutcome::HookDropped => f.write_str("dropped by on_command"),
            CheckOutcome::HookError { error, skipped } => {
                write!(f, "hook error: {error}")?;
                if *skipped {
                    f.write_str(" (on_hook_error = \"skip\": the command would be dropped)")
                } else {
                    f.write_str(" (on_hook_error = \"fail\": the migration would stop)")
                }
            }
        }
    }
}

/// Everything `ferry check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The plan's name.
    pub plan: String,
    /// One line per sample.
    pub lines: Vec<CheckLine>,
    /// Plan-level findings that are not errors.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Samples on which `on_command` failed.
    pub fn hook_errors(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l.outcome, CheckOutcome::HookError { .. }))
            .count()
    }

    /// True when no hook failed.
    pub fn is_ok(&self) -> bool {
        self.hook_errors() == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan {}: {} sample commands",
            self.plan,
            self.lines.len()
        )?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Representative writes over several dbs, prefixes and key positions.
pub fn builtin_samples() -> Vec<(u32, Argv)> {
    let s = |db: u32, args: &[&str]| (db, Argv::from_args(args));
    vec![
        s(0, &["SET", "fs:1", "v"]),
        s(0, &["HSET", "fs:user:42", "name", "Ada"]),
        s(0, &["SET", "cache:page:/", "<html>", "PX", "60000"]),
        s(0, &["DEL", "fs:1", "cache:page:/"]),
        s(0, &["MSET", "fs:a", "1", "other:b", "2"]),
        s(0, &["RENAME", "fs:old", "fs:new"]),
        s(
            0,
            &[
                "LMOVE",
                "queue:default",
                "queue:processing",
                "LEFT",
                "RIGHT",
            ],
        ),
        s(0, &["SUNIONSTORE", "fs:all", "fs:s1", "fs:s2"]),
        s(0, &["EXPIRE", "sess:abc", "3600"]),
        s(0, &["INCR", "stat:processed"]),
        s(0, &["ZADD", "schedule", "1700000000", "job-1"]),
        s(0, &["XADD", "events", "*", "type", "signup"]),
        s(
            0,
            &[
                "EVAL",
                "return redis.call('INCR', KEYS[1])",
                "1",
                "fs:counter",
            ],
        ),
        s(
            0,
            &["LPUSH", "sidekiq:queue:default", "{\"class\":\"Job\"}"],
        ),
        s(0, &["COPY", "fs:1", "fs:2", "DB", "1"]),
        s(0, &["MOVE", "fs:1", "1"]),
        s(0, &["PUBLISH", "events", "hello"]),
        s(0, &["FLUSHALL"]),
        s(1, &["SET", "fs:db1", "v"]),
        s(1, &["SADD", "tags:1", "a", "b"]),
        s(2, &["SET", "other:db2", "v"]),
    ]
}

/// Dry-runs `plan` over `samples` (or the plan's `check.samples`, or [`builtin_samples`] when
/// both are empty) with the built-in command table.
pub fn check(plan: &Plan, samples: &[(u32, Argv)]) -> CheckReport {
    let table = CommandTable::builtin();
    let owned;
    let samples = if !samples.is_empty() {
        samples
    } else if !plan.check_samples.is_empty() {
        &plan.check_samples
    } else {
        owned = builtin_samples();
        &owned
    };
    let lines = samples
        .iter()
        .map(|(db, argv)| CheckLine {
            db: *db,
            input: argv.clone(),
            outcome: dry_run(plan, table, *db, argv),
        })
        .collect();
    CheckReport {
        plan: plan.name.clone(),
        lines,
        warnings: warnings(plan, table),
    }
}

fn dry_run(plan: &Plan, table: &CommandTable, db: u32, input: &Argv) -> CheckOutcome {
    let source_keys = table.keys(input);
    if source_keys.len() > 1
        && let Some(inside) = mixed_keys(
            source_keys
                .iter()
                .map(|k| input.get(k.pos).unwrap_or_default()),
            |key| plan.keys.allows(db, key),
        )
    {
        return CheckOutcome::Recopied(
            inside
                .into_iter()
                .map(|i| input.get(source_keys[i].pos).unwrap_or_default().to_vec())
                .collect(),
        );
    }
    let (new_db, argv) = match apply_rules(&plan.rewrite, &plan.keys, table, db, input.clone()) {
        Applied::Excluded => return CheckOutcome::Excluded,
        Applied::Dropped => return CheckOutcome::Dropped,
        Applied::Keep { db, argv } => (db, argv),
    };
    let keys: Vec<usize> = table.keys(&argv).iter().map(|k| k.pos).collect();
    if let Some(hook) = &plan.on_command {
        return match hook.call(new_db, &argv, &keys) {
            Ok(HookOutcome::Keep) => kept(db, input, new_db, argv, &keys, plan),
            Ok(HookOutcome::Replace(cmds)) => CheckOutcome::HookReplaced(cmds),
            Ok(HookOutcome::Drop) => CheckOutcome::HookDropped,
            Err(error) => CheckOutcome::HookError {
                error,
                skipped: plan.on_hook_error == HookErrorPolicy::Skip,
            },
        };
    }
    kept(db, input, new_db, argv, &keys, plan)
}

fn kept(
    db: u32,
    input: &Argv,
    new_db: u32,
    argv: Argv,
    keys: &[usize],
    plan: &Plan,
) -> CheckOutcome {
    let mut changes = Vec::new();
    for &pos in keys {
        let (before, after) = (input.get(pos), argv.get(pos));
        if before != after {
            changes.push(format!(
                "renamed {} → {}",
                crate::escape::quote(before.unwrap_or_default()),
                crate::escape::quote(after.unwrap_or_default())
            ));
        }
    }
    if new_db != db {
        changes.push(format!("moved db{db} → db{new_db}"));
    }
    let other_args = (1..argv.len()).any(|i| !keys.contains(&i) && input.get(i) != argv.get(i));
    if other_args {
        changes.push("db argument mapped".into());
    }
    if keys.is_empty() && plan.keys.filters_keys() {
        changes.push("no keys, so keys.include/exclude do not apply".into());
    }
    CheckOutcome::Kept {
        db: new_db,
        argv,
        changes,
    }
}

fn warnings(plan: &Plan, table: &CommandTable) -> Vec<String> {
    let mut out = Vec::new();
    let names: Vec<String> = table.iter().map(|s| s.name.to_ascii_uppercase()).collect();
    for (i, rule) in plan.rewrite.iter().enumerate() {
        match rule {
            Rule::DropCommands(cmds) => {
                for name in cmds {
                    if table.get(name).is_none() {
                        let top = name.split('|').next().unwrap_or(name);
                        let hint = suggest(top, names.iter().map(String::as_str))
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        out.push(format!(
                            "rewrite[{}]: `{name}` is not a Redis 7.0 command{hint}; a module command is fine",
                            i + 1
                        ));
                    }
                }
            }
            Rule::MoveDb { from, to } if !plan.keys.allows_db(*from) => out.push(format!(
                "rewrite[{}]: move_db({from}, {to}) never applies: db {from} is not in keys.dbs",
                i + 1
            )),
            _ => {}
        }
    }
    out
}
