//! Whether a migration copies the source's function libraries, decided before anything is
//! copied.
//!
//! ## Behavior
//! - A source without `FUNCTION` (an engine before 7.0, or the command renamed away) has no
//!   library: nothing to copy, nothing to refuse.
//! - A source with libraries and a target that refuses `FUNCTION` (an older engine, the command
//!   renamed away, an ACL): refused at start with one line naming the libraries. Without them
//!   the application's `FCALL`s would fail on the target the moment it switches, although every
//!   key arrived.
//! - A target library that defines a function of a source library under another library name:
//!   refused at start too, since `FUNCTION RESTORE … REPLACE` rejects the whole copy then.
//! - A source that refuses `FUNCTION LIST` for another reason (an ACL) cannot say whether it has
//!   libraries: refused as well, rather than risk losing them silently.
//! - A target without `FUNCTION` facing a source with no library yet is accepted with a warning:
//!   a library loaded during the run then fails on the target, and the run with it at the final
//!   fence (docs/redis-behaviour.md §3).

use std::collections::BTreeMap;

use crate::net::Endpoint;

use super::report::{MigrateError, stage};

/// Library name → the names of its functions, from `FUNCTION LIST`.
type Libraries = BTreeMap<String, Vec<String>>;

/// How `plan.drop_commands` leaves the libraries out, for the refusals' advice.
const LEAVE_OUT: &str = "or leave them out with ferry.drop_commands { \"FUNCTION\" } in a plan";

/// True when the snapshot should read the source's function libraries; an error when they
/// cannot be copied (see the module doc).
pub(super) async fn check(source: &Endpoint, target: &Endpoint) -> Result<bool, MigrateError> {
    let source_libs = match list(source).await? {
        Ok(libs) => libs,
        Err(e) if e.contains("unknown command") => {
            tracing::info!(
                "The source has no FUNCTION command: there are no function libraries to copy."
            );
            return Ok(false);
        }
        Err(e) => {
            return Err(stage(
                "functions",
                format!(
                    "the source refuses FUNCTION LIST ({e}), so ferry cannot tell whether it has function libraries to copy; allow FUNCTION LIST and FUNCTION DUMP for ferry's user, {LEAVE_OUT}"
                ),
            ));
        }
    };
    let target_libs = match list(target).await? {
        Ok(libs) => libs,
        Err(e) if source_libs.is_empty() => {
            tracing::warn!(
                error = %e,
                "The target refuses FUNCTION; the source has no function library now, but one loaded during the run would fail on the target, and the run with it."
            );
            return Ok(true);
        }
        Err(e) => {
            let n = source_libs.len();
            return Err(stage(
                "functions",
                format!(
                    "the source has {n} function {} ({}), but the target refuses FUNCTION ({e}): the application's FCALLs would fail there after the switch; migrate to a target with functions (Redis 7.0 or newer), {LEAVE_OUT}",
                    if n == 1 { "library" } else { "libraries" },
                    names(source_libs.keys()),
                ),
            ));
        }
    };
    if let Some((src_lib, function, dst_lib)) = clash(&source_libs, &target_libs) {
        return Err(stage(
            "functions",
            format!(
                "the target's function library '{dst_lib}' defines '{function}', which the source's library '{src_lib}' defines too, so FUNCTION RESTORE would refuse to copy the source's libraries; delete '{dst_lib}' from the target (FUNCTION DELETE), {LEAVE_OUT}"
            ),
        ));
    }
    if !source_libs.is_empty() {
        tracing::info!(
            libraries = %names(source_libs.keys()),
            "Function libraries are copied with the snapshot."
        );
    }
    Ok(true)
}

/// The first function a source library defines that a target library of another name defines
/// too: `(source library, function, target library)`.
fn clash<'a>(source: &'a Libraries, target: &'a Libraries) -> Option<(&'a str, &'a str, &'a str)> {
    source.iter().find_map(|(src_lib, functions)| {
        functions.iter().find_map(|f| {
            target
                .iter()
                .filter(|(dst_lib, _)| *dst_lib != src_lib)
                .find(|(_, theirs)| theirs.contains(f))
                .map(|(dst_lib, _)| (src_lib.as_str(), f.as_str(), dst_lib.as_str()))
        })
    })
}

/// At most five names, quoted, then how many more.
fn names<'a>(names: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = names.len();
    let mut out: Vec<String> = names.take(5).map(|s| format!("'{s}'")).collect();
    if n > 5 {
        out.push(format!("{} more", n - 5));
    }
    out.join(", ")
}

/// `FUNCTION LIST` of one side: `Ok(Err(reply))` when the server refuses it.
async fn list(ep: &Endpoint) -> Result<Result<Libraries, String>, MigrateError> {
    let mut con = ep.control().await?;
    match redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async::<redis::Value>(&mut con)
        .await
    {
        Ok(v) => Ok(Ok(libraries(&v))),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
            Err(MigrateError::Net(ep.classify(&e)))
        }
        Err(e) => Ok(Err(match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {}", detail.trim()),
            _ => e.to_string().replace('\n', " "),
        })),
    }
}

/// The libraries of a `FUNCTION LIST` reply (RESP2 flat pairs or RESP3 maps).
fn libraries(v: &redis::Value) -> Libraries {
    let mut out = Libraries::new();
    let redis::Value::Array(libs) = v else {
        return out;
    };
    for lib in libs {
        let fields = pairs(lib);
        let Some(name) = field(&fields, "library_name").and_then(text) else {
            continue;
        };
        let functions = match field(&fields, "functions") {
            Some(redis::Value::Array(fs)) => fs
                .iter()
                .filter_map(|f| field(&pairs(f), "name").and_then(text))
                .collect(),
            _ => Vec::new(),
        };
        out.insert(name, functions);
    }
    out
}

fn pairs(v: &redis::Value) -> Vec<(&redis::Value, &redis::Value)> {
    match v {
        redis::Value::Array(items) => items
            .chunks_exact(2)
            .map(|pair| (&pair[0], &pair[1]))
            .collect(),
        redis::Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(fields: &[(&redis::Value, &'a redis::Value)], name: &str) -> Option<&'a redis::Value> {
    fields
        .iter()
        .find(|(k, _)| text(k).as_deref() == Some(name))
        .map(|(_, v)| *v)
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// One library of a RESP2 `FUNCTION LIST` reply, as Redis 7.0 sends it.
    fn lib(name: &str, functions: &[&str]) -> Value {
        Value::Array(vec![
            bulk("library_name"),
            bulk(name),
            bulk("engine"),
            bulk("LUA"),
            bulk("functions"),
            Value::Array(
                functions
                    .iter()
                    .map(|f| {
                        Value::Array(vec![
                            bulk("name"),
                            bulk(f),
                            bulk("description"),
                            Value::Nil,
                            bulk("flags"),
                            Value::Array(vec![]),
                        ])
                    })
                    .collect(),
            ),
        ])
    }

    #[test]
    fn reads_libraries_and_finds_clashes_across_library_names_only() {
        let source = libraries(&Value::Array(vec![
            lib("libA", &["fa", "fb"]),
            lib("libB", &["fc"]),
        ]));
        assert_eq!(
            source,
            Libraries::from([
                ("libA".into(), vec!["fa".into(), "fb".into()]),
                ("libB".into(), vec!["fc".into()]),
            ])
        );
        // The same library name is replaced by the copy: no clash.
        let same = libraries(&Value::Array(vec![lib("libA", &["fa"])]));
        assert_eq!(clash(&source, &same), None);
        let other = libraries(&Value::Array(vec![lib("mine", &["x", "fb"])]));
        assert_eq!(clash(&source, &other), Some(("libA", "fb", "mine")));
        assert_eq!(clash(&source, &Libraries::new()), None);
        assert!(libraries(&Value::Array(vec![])).is_empty());
    }

    #[test]
    fn names_are_quoted_and_capped() {
        let libs: Vec<String> = (0..7).map(|i| format!("l{i}")).collect();
        assert_eq!(names(libs.iter()), "'l0', 'l1', 'l2', 'l3', 'l4', 2 more");
        assert_eq!(names(libs[..1].iter()), "'l0'");
    }
}
