//! `report.html`: the run report as one self-contained page (no script, no external asset):
//! the figures of `report.json` in tables, and inline SVG charts of lag, throughput and
//! snapshot progress drawn here, with the pauses marked.
//!
//! Every figure cell carries `data-field="<json path>"`, and every chart point is a
//! `<circle class="pt">`, so a test can read the rendered page back and compare it with the
//! JSON.

use std::fmt::Write;

use super::report::{Point, Report};

/// Most points drawn per chart; a longer series is thinned evenly.
const MAX_DRAWN: usize = 400;
const W: f64 = 760.0;
const H: f64 = 220.0;
const PAD_L: f64 = 64.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 16.0;
const PAD_B: f64 = 32.0;

/// The page for `r`.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(32 << 10);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        h,
        "<title>ferry report: {}</title><style>{CSS}</style></head><body>",
        esc(&r.plan)
    );
    let _ = write!(
        h,
        "<h1>ferry run report: plan <span data-field=\"plan\">{}</span></h1>",
        esc(&r.plan)
    );
    let _ = write!(
        h,
        "<p class=\"outcome {}\">Outcome: <b data-field=\"outcome\">{}</b></p>",
        esc(&r.outcome.replace(' ', "-")),
        esc(&r.outcome)
    );
    if let Some(e) = &r.errors.run {
        let _ = write!(
            h,
            "<p class=\"error\" data-field=\"errors.run\">{}</p>",
            esc(e)
        );
    }
    table(
        &mut h,
        "Run",
        &[
            ("ferry_version", "ferry version", r.ferry_version.clone()),
            ("source_server", "source", r.source_server.clone()),
            ("target_server", "target", r.target_server.clone()),
            ("started_ms", "started (unix ms)", r.started_ms.to_string()),
            ("ended_ms", "ended (unix ms)", r.ended_ms.to_string()),
            (
                "elapsed_secs",
                "elapsed (s)",
                format!(
                    "{:.1}",
                    r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0
                ),
            ),
        ],
    );
    let c = &r.counts;
    table(
        &mut h,
        "Counts",
        &[
            (
                "counts.snapshot_keys",
                "snapshot keys read",
                c.snapshot_keys.to_string(),
            ),
            (
                "counts.snapshot_bytes",
                "snapshot bytes",
                c.snapshot_bytes.to_string(),
            ),
            (
                "counts.journal_entries",
                "journal entries",
                c.journal_entries.to_string(),
            ),
            (
                "counts.commands",
                "commands replayed",
                c.commands.to_string(),
            ),
            ("counts.restores", "keys restored", c.restores.to_string()),
            ("counts.resyncs", "resyncs", c.resyncs.to_string()),
            (
                "counts.expiry_recopies",
                "re-copies after expiry",
                c.expiry_recopies.to_string(),
            ),
            (
                "counts.evicted_keys",
                "keys evicted on the source",
                c.evicted_keys.to_string(),
            ),
            (
                "counts.eviction_recopies",
                "re-copies after evictions",
                c.eviction_recopies.to_string(),
            ),
            (
                "counts.target_keys",
                "keys on the target at the end",
                c.target_keys
                    .map_or_else(|| "unknown".into(), |n| n.to_string()),
            ),
        ],
    );
    let p = &r.pause;
    table(
        &mut h,
        "Pause",
        &[
            (
                "pause.pause_ms",
                "source writes paused (ms)",
                p.pause_ms.to_string(),
            ),
            (
                "pause.fence_ms",
                "drain to the fence (ms)",
                p.fence_ms.to_string(),
            ),
            (
                "pause.final_pause_ms",
                "final fence after the trailing window (ms)",
                p.final_pause_ms.to_string(),
            ),
            (
                "pause.pause_expired",
                "pause ran out",
                p.pause_expired.to_string(),
            ),
        ],
    );
    match &r.verification {
        Some(v) => {
            let kinds = if v.by_kind.is_empty() {
                "none".to_string()
            } else {
                v.by_kind
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table(
                &mut h,
                "Verification",
                &[
                    ("verification.keys_checked", "keys checked", v.keys_checked.to_string()),
                    ("verification.differences", "differences", v.differences.to_string()),
                    ("verification.rechecked", "re-checks", v.rechecked.to_string()),
                    ("verification.sample_drawn", "sample: keys drawn", v.sample_drawn.to_string()),
                    ("verification.sample_skipped", "sample: skipped (not migrated)", v.sample_skipped.to_string()),
                    ("verification.by_kind", "by kind", kinds),
                ],
            );
        }
        None => h.push_str(
            "<h2>Verification</h2><p data-field=\"verification\">No fenced verification ran in this run (run one with a verify phase, or <code>ferry verify</code>).</p>",
        ),
    }
    if let Some(l) = &r.late_writes {
        table(
            &mut h,
            "Late writes after the switch",
            &[
                ("late_writes.writes", "late writes", l.writes.to_string()),
                ("late_writes.clients", "clients", l.clients.to_string()),
                ("late_writes.keys", "keys", l.keys.to_string()),
                (
                    "late_writes.conflicts",
                    "conflicts",
                    l.conflicts.to_string(),
                ),
            ],
        );
    }
    let errors: Vec<(String, String, String)> = r
        .errors
        .by_code
        .iter()
        .map(|(code, n)| {
            (
                format!("errors.by_code.{code}"),
                code.clone(),
                n.to_string(),
            )
        })
        .collect();
    if errors.is_empty() {
        h.push_str("<h2>Errors</h2><p>No error replies.</p>");
    } else {
        let rows: Vec<(&str, &str, String)> = errors
            .iter()
            .map(|(f, c, n)| (f.as_str(), c.as_str(), n.clone()))
            .collect();
        table(&mut h, "Error replies by code", &rows);
    }

    let marks: Vec<(f64, String)> = p
        .fences
        .iter()
        .map(|f| {
            (
                f.at_ms.saturating_sub(r.started_ms) as f64 / 1000.0,
                format!("{} fence: paused {} ms", f.name, f.pause_ms),
            )
        })
        .collect();
    let _ = write!(
        h,
        "<h2>Over time</h2><p>One point a second, <span data-field=\"series.length\">{}</span> points; dashed lines mark the fences and their pauses.</p>",
        r.series.len()
    );
    chart(
        &mut h,
        "lag",
        "Replay lag (ms)",
        &r.series,
        |p| p.lag_ms as f64,
        None,
        &marks,
    );
    chart(
        &mut h,
        "throughput",
        "Commands replayed per second",
        &r.series,
        |p| p.commands_per_sec,
        None,
        &marks,
    );
    chart(
        &mut h,
        "snapshot",
        "Snapshot progress: keys handled (points) of the running snapshot's total (grey line)",
        &r.series,
        |p| p.snapshot_done as f64,
        Some(&|p: &Point| p.snapshot_total as f64),
        &marks,
    );
    h.push_str("</body></html>\n");
    h
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:820px}\
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.outcome.finished b{color:#17702e}\
.outcome.failed b,.outcome.differences b,.error{color:#a31515}svg{background:#fafafa;border:1px solid #ddd}\
polyline{fill:none;stroke:#1f5fbf;stroke-width:1.5}polyline.total{stroke:#999;stroke-dasharray:2 2}circle.pt{fill:#1f5fbf}line.axis{stroke:#888}\
line.pause{stroke:#c0392b;stroke-dasharray:4 3}text{font-size:11px;fill:#444}text.pause{fill:#c0392b}";

fn table(h: &mut String, title: &str, rows: &[(impl AsRef<str>, impl AsRef<str>, String)]) {
    let _ = write!(h, "<h2>{}</h2><table>", esc(title));
    for (field, label, value) in rows {
        let _ = write!(
            h,
            "<tr><th>{}</th><td class=\"n\" data-field=\"{}\">{}</td></tr>",
            esc(label.as_ref()),
            esc(field.as_ref()),
            esc(value)
        );
    }
    h.push_str("</table>");
}

/// One line chart: x is time, y is `value`; every drawn point is a circle. `reference`, when
/// given, is drawn as a grey line without points (a total to reach).
fn chart(
    h: &mut String,
    id: &str,
    title: &str,
    series: &[Point],
    value: impl Fn(&Point) -> f64,
    reference: Option<&dyn Fn(&Point) -> f64>,
    marks: &[(f64, String)],
) {
    let step = series.len().div_ceil(MAX_DRAWN).max(1);
    let drawn: Vec<(f64, f64)> = series
        .iter()
        .step_by(step)
        .map(|p| (p.t_secs, value(p)))
        .collect();
    let t_max = drawn
        .iter()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.0))
        .fold(1.0_f64, f64::max);
    let refs: Vec<(f64, f64)> = match reference {
        Some(f) => series
            .iter()
            .step_by(step)
            .map(|p| (p.t_secs, f(p)))
            .collect(),
        None => Vec::new(),
    };
    let y_max = drawn
        .iter()
        .chain(&refs)
        .map(|p| p.1)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let x = |t: f64| PAD_L + t / t_max * (W - PAD_L - PAD_R);
    let y = |v: f64| H - PAD_B - v / y_max * (H - PAD_T - PAD_B);
    let _ = write!(
        h,
        "<h3>{}</h3><svg id=\"chart-{id}\" class=\"chart\" data-points=\"{}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        drawn.len(),
        esc(title)
    );
    let _ = write!(
        h,
        "<line class=\"axis\" x1=\"{PAD_L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\"/><line class=\"axis\" x1=\"{PAD_L}\" y1=\"{PAD_T}\" x2=\"{PAD_L}\" y2=\"{0}\"/>",
        H - PAD_B,
        W - PAD_R
    );
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
        PAD_L - 4.0,
        PAD_T + 8.0,
        fmt_num(y_max),
        PAD_L - 4.0,
        H - PAD_B
    );
    let _ = write!(
        h,
        "<text x=\"{PAD_L}\" y=\"{}\">0 s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0} s</text>",
        H - 10.0,
        W - PAD_R,
        H - 10.0,
        t_max
    );
    for (t, label) in marks {
        let _ = write!(
            h,
            "<line class=\"pause\" x1=\"{0:.1}\" y1=\"{PAD_T}\" x2=\"{0:.1}\" y2=\"{1}\"><title>{2}</title></line><text class=\"pause\" x=\"{3:.1}\" y=\"{4}\" text-anchor=\"end\">{2}</text>",
            x(*t),
            H - PAD_B,
            esc(label),
            x(*t) - 4.0,
            PAD_T + 10.0
        );
    }
    if !refs.is_empty() {
        h.push_str("<polyline class=\"total\" points=\"");
        for (t, v) in &refs {
            let _ = write!(h, "{:.1},{:.1} ", x(*t), y(*v));
        }
        h.push_str("\"/>");
    }
    if !drawn.is_empty() {
        h.push_str("<polyline points=\"");
        for (t, v) in &drawn {
            let _ = write!(h, "{:.1},{:.1} ", x(*t), y(*v));
        }
        h.push_str("\"/>");
        for (t, v) in &drawn {
            let _ = write!(
                h,
                "<circle class=\"pt\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" data-t=\"{t}\" data-v=\"{v}\"/>",
                x(*t),
                y(*v)
            );
        }
    }
    h.push_str("</svg>");
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_draws_every_point_and_escapes_names() {
        let r = Report {
            plan: "<p&q>".into(),
            outcome: "finished".into(),
            series: (0..5)
                .map(|i| Point {
                    t_secs: i as f64,
                    lag_ms: i * 10,
                    ..Point::default()
                })
                .collect(),
            ..Report::default()
        };
        let page = render(&r);
        assert!(page.contains("&lt;p&amp;q&gt;"));
        assert!(!page.contains("<p&q>"));
        assert_eq!(page.matches("<circle class=\"pt\"").count(), 15);
        assert!(page.contains("id=\"chart-lag\" class=\"chart\" data-points=\"5\""));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http"), "no external reference");
    }
}
