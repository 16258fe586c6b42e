//! `docs/troubleshooting.md` stays honest: every message it quotes is one ferry can print.
//!
//! The convention, stated at the end of the page too: a line that starts with `Message: ` quotes
//! one message in one Markdown code span (double backticks when the message holds a backtick).
//! `…` in the quote stands for a part that changes. The quote must appear in one string literal
//! under `src/` (outside comments and test modules), where a format placeholder (`{}`,
//! `{endpoint}`, `{:?}`) counts as `…` and `{{`/`}}` as braces.

use std::path::Path;

const ELLIPSIS: char = '…';

#[test]
fn every_quoted_message_exists_in_the_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/troubleshooting.md")).unwrap();
    let messages = quoted_messages(&doc).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        messages.len() >= 50,
        "only {} messages quoted; the convention may have been lost",
        messages.len()
    );
    let mut templates = Vec::new();
    source_literals(&root.join("src"), &mut templates);
    let templates: Vec<String> = templates
        .iter()
        .map(|l| squeeze(&placeholders_to_ellipsis(l)))
        .collect();
    let missing: Vec<&String> = messages
        .iter()
        .filter(|m| {
            let m = squeeze(m);
            !templates.iter().any(|t| t.contains(&m))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md quotes messages that are in no string literal under src/ \
         (reword or remove their entries):\n{}",
        missing
            .iter()
            .map(|m| format!("  {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker itself, on made-up text.
#[test]
fn the_checker_reads_the_convention() {
    let doc = "# T\n\nMessage: `cannot connect to …: …`\n\nMessage: `` a `quoted` one ``\n";
    assert_eq!(
        quoted_messages(doc).unwrap(),
        ["cannot connect to …: …", "a `quoted` one"]
    );
    assert!(quoted_messages("Message: `unclosed\n").is_err());
    assert!(quoted_messages("Message: `a` and more\n").is_err());
    assert!(quoted_messages("- Message: `a list item`\n").is_err());
    assert!(
        quoted_messages("Message: `… …`\n").is_err(),
        "no fixed text"
    );

    let code = r####"
        // "in a comment"
        /* "in a /* nested */ block" */
        fn f<'a>(x: &'a str) -> char { let _ = "cannot connect to {endpoint}: {source}"; '"' }
        const R: &str = r#"raw "quoted" {0}"#;
        const C: &str = "a \"b\" {{literal}} {x:?} \
                         continued";
        #[cfg(test)]
        mod tests { const T: &str = "only in a test"; }
    "####;
    let literals: Vec<String> = literals(code)
        .iter()
        .map(|l| placeholders_to_ellipsis(l))
        .collect();
    assert_eq!(
        literals,
        [
            "cannot connect to …: …",
            "raw \"quoted\" …",
            "a \"b\" {literal} … continued",
        ]
    );
}

/// The quotes of every `Message: ` line, in order.
fn quoted_messages(doc: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let at = format!("docs/troubleshooting.md:{}", i + 1);
        let trimmed = line.trim_start_matches([' ', '-', '*', '>']);
        if !line.starts_with("Message:") {
            if trimmed.starts_with("Message:") {
                return Err(format!("{at}: `Message:` must start the line: {line}"));
            }
            continue;
        }
        let rest = line
            .strip_prefix("Message: ")
            .ok_or_else(|| format!("{at}: expected `Message: ` and a code span: {line}"))?;
        let ticks = rest.len() - rest.trim_start_matches('`').len();
        if ticks == 0 {
            return Err(format!("{at}: the message is not in a code span: {line}"));
        }
        let fence = &rest[..ticks];
        let body = &rest[ticks..];
        // The closing run is exactly as long as the opening one.
        let end = (0..body.len())
            .filter(|&j| body.is_char_boundary(j))
            .find(|&j| {
                body[j..].starts_with(fence)
                    && !body[j + ticks..].starts_with('`')
                    && (j == 0 || !body[..j].ends_with('`'))
            })
            .ok_or_else(|| format!("{at}: unclosed code span: {line}"))?;
        if !body[end + ticks..].trim().is_empty() {
            return Err(format!("{at}: text after the code span: {line}"));
        }
        let mut quote = &body[..end];
        if quote.len() > 1 && quote.starts_with(' ') && quote.ends_with(' ') {
            quote = &quote[1..quote.len() - 1];
        }
        if quote.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
            return Err(format!("{at}: a message needs some fixed text: {line}"));
        }
        out.push(quote.to_string());
    }
    Ok(out)
}

/// Whitespace runs as one space, so that a literal continued over lines matches.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every string literal of every `.rs` file under `dir`.
fn source_literals(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_literals(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.extend(literals(&std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The string literals of Rust code, unescaped, outside comments and the test module (from a
/// `#[cfg(test)]` line followed by `mod` to the end of the file).
fn literals(code: &str) -> Vec<String> {
    let lines: Vec<&str> = code.lines().collect();
    let cut = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    let code: Vec<char> = lines[..cut].join("\n").chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let c = code[i];
        let next = code.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                while i < code.len() && code[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < code.len() {
                    if code[i] == '/' && code.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if code[i] == '*' && code.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '\'' => {
                // A char literal ('x', '\n', '"') or a lifetime ('a).
                if next == Some('\\') {
                    i += 3; // past the quote, the backslash and the escaped character
                    while i < code.len() && code[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if code.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            'r' if matches!(next, Some('"' | '#')) && starts_token(&code, i) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while code.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if code.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut k = start;
                while k < code.len() {
                    if code[k] == '"' && (1..=hashes).all(|h| code.get(k + h) == Some(&'#')) {
                        break;
                    }
                    k += 1;
                }
                out.push(code[start..k.min(code.len())].iter().collect());
                i = k + 1 + hashes;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < code.len() && code[i] != '"' {
                    if code[i] == '\\' {
                        i += 1;
                        match code.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('r') => s.push('\r'),
                            Some('0') => s.push('\0'),
                            Some('\n') => {
                                // A continuation: the newline and the next line's indent go.
                                while code.get(i + 1).is_some_and(|c| c.is_whitespace()) {
                                    i += 1;
                                }
                            }
                            Some('x') => {
                                let hex: String = code[i + 1..i + 3].iter().collect();
                                s.push(u8::from_str_radix(&hex, 16).map_or('?', char::from));
                                i += 2;
                            }
                            Some('u') => {
                                let close = (i..code.len()).find(|&k| code[k] == '}').unwrap();
                                let hex: String = code[i + 2..close].iter().collect();
                                s.push(
                                    u32::from_str_radix(&hex, 16)
                                        .ok()
                                        .and_then(char::from_u32)
                                        .unwrap_or('?'),
                                );
                                i = close;
                            }
                            Some(&other) => s.push(other),
                            None => {}
                        }
                    } else {
                        s.push(code[i]);
                    }
                    i += 1;
                }
                out.push(s);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether `code[i]` starts a token (a raw string's `r`, or the `r` of `br`).
fn starts_token(code: &[char], i: usize) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    match i.checked_sub(1).map(|p| code[p]) {
        None => true,
        Some('b') => i < 2 || !ident(code[i - 2]),
        Some(c) => !ident(c),
    }
}

/// A literal as a template: each format placeholder (`{}`, `{name}`, `{0:?}`, `{:#018x}`)
/// becomes `…`; `{{` and `}}` become braces; other braces stay.
fn placeholders_to_ellipsis(literal: &str) -> String {
    let chars: Vec<char> = literal.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' if chars.get(i + 1) == Some(&'{') => {
                out.push('{');
                i += 2;
            }
            '}' if chars.get(i + 1) == Some(&'}') => {
                out.push('}');
                i += 2;
            }
            '{' => {
                let close = chars[i + 1..].iter().position(|&c| c == '}' || c == '{');
                let spec: Option<String> = close
                    .filter(|&n| chars[i + 1 + n] == '}')
                    .map(|n| chars[i + 1..i + 1 + n].iter().collect());
                match spec {
                    Some(spec) if is_format_spec(&spec) => {
                        out.push(ELLIPSIS);
                        i += spec.chars().count() + 2;
                    }
                    _ => {
                        out.push('{');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// `name`, `0`, `` (empty), optionally followed by `:` and a format spec without spaces.
fn is_format_spec(spec: &str) -> bool {
    let (arg, fmt) = spec.split_once(':').unwrap_or((spec, ""));
    arg.chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        && !fmt.contains(char::is_whitespace)
}
