//! What the client commands print: tables sized to their content, JSON/YAML in the API's field order,
//! and writes that end quietly when the reader of a pipe has gone (`vane rollout list | head -1`).

use std::io::Write;

use clap::ValueEnum;

/// A JSON value that keeps the API's field order (serde_json's own `Value` sorts keys).
pub type Doc = yaml_serde::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns (the default of `list` and `events`).
    Table,
    /// The table with more columns.
    Wide,
    /// The API's JSON, fields in the API's order (the default of `get`).
    Json,
    /// The same document as YAML.
    Yaml,
    /// Only the ids, one a line (events: `<rollout id>-<seq>`, as in webhook event ids).
    Name,
}

/// Stdout was closed by its reader: stop printing; this is not an error.
#[derive(Debug)]
pub struct Closed;

/// Write `text` to stdout; `Err(Closed)` when nobody reads it any more.
pub fn emit(text: &str) -> Result<(), Closed> {
    let mut out = std::io::stdout().lock();
    // Any write error means the output cannot be delivered (a closed pipe in practice); the exit code
    // then only reflects what the command did.
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(|_| Closed)
}

/// A string field of a document (empty when absent).
pub fn s(v: &Doc, key: &str) -> String {
    match v.get(key) {
        Some(Doc::String(s)) => s.clone(),
        Some(Doc::Number(n)) => n.to_string(),
        Some(Doc::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Columns as wide as their widest cell, two spaces apart; the last column is not padded, so a
/// long message never pushes anything else. `right` lists the right-aligned (numeric) columns.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let last = r.len().saturating_sub(1);
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                if i != last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The document as pretty JSON or YAML.
pub fn document(v: &Doc, o: Output) -> String {
    match o {
        Output::Yaml => yaml_serde::to_string(v).unwrap_or_default(),
        // Serialising a parsed document cannot fail.
        _ => serde_json::to_string_pretty(v).map(|s| s + "\n").unwrap_or_default(),
    }
}

/// Rollouts (`list`, `get`) in a table, wide table or as ids.
pub fn rollouts(items: &[Doc], o: Output) -> String {
    if o == Output::Name {
        return items.iter().map(|r| s(r, "id") + "\n").collect();
    }
    let wide = o == Output::Wide;
    let mut headers = vec!["ID", "NAMESPACE/SERVICE", "VERSION", "PHASE", "WEIGHT"];
    if wide {
        headers.extend(["STABLE", "STRATEGY", "POLICY", "STEP", "FAILED", "CREATED", "BY"]);
    }
    headers.push("MESSAGE");
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let mut row = vec![
                s(r, "id"),
                format!("{}/{}", s(r, "namespace"), s(r, "service")),
                s(r, "version"),
                s(r, "phase"),
                format!("{}%", s(r, "canaryWeight")),
            ];
            if wide {
                let steps = r.get("steps").and_then(Doc::as_sequence).map(Vec::len).unwrap_or(0);
                let step = r.get("stepIndex").and_then(Doc::as_u64).unwrap_or(0);
                row.extend([
                    s(r, "stableVersion"),
                    s(r, "strategy"),
                    s(r, "policy"),
                    format!("{}/{steps}", (step + 1).min(steps as u64)),
                    format!("{}/{}", s(r, "failedChecks"), s(r, "threshold")),
                    s(r, "createdAt"),
                    s(r, "createdBy"),
                ]);
            }
            row.push(s(r, "message"));
            row
        })
        .collect();
    table(&headers, &rows, &[4])
}

/// A rollout's events in a table, wide table or as event ids.
pub fn events(rollout_id: &str, items: &[Doc], o: Output) -> String {
    if o == Output::Name {
        return items.iter().map(|e| format!("{rollout_id}-{}\n", s(e, "seq"))).collect();
    }
    let wide = o == Output::Wide;
    let mut headers = vec!["SEQ", "AT", "TYPE", "ACTOR"];
    if wide {
        headers.extend(["PHASE", "WEIGHT"]);
    }
    headers.push("MESSAGE");
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let mut row = vec![s(e, "seq"), s(e, "at"), s(e, "type"), s(e, "actor")];
            if wide {
                row.extend([s(e, "phase"), format!("{}%", s(e, "canaryWeight"))]);
            }
            row.push(s(e, "message"));
            row
        })
        .collect();
    table(&headers, &rows, if wide { &[0, 5] } else { &[0] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_longest_cell() {
        let long = "ai-workflow-production/agent-service-with-a-long-name";
        let t = table(
            &["A", "B", "C"],
            &[vec!["1".into(), long.into(), "x".into()], vec!["22".into(), "s".into(), "y".into()]],
            &[0],
        );
        let lines: Vec<&str> = t.lines().collect();
        let col = lines[1].find(" x").unwrap();
        assert_eq!(lines[2].find(" y").unwrap(), col, "{t}");
        assert!(lines[0].starts_with(" A  B"), "{t}");
        assert!(t.lines().all(|l| l == l.trim_end()), "no trailing blanks: {t:?}");
    }

    #[test]
    fn json_keeps_the_api_order() {
        let v: Doc = serde_json::from_str(r#"{"id":"x","service":"s","canaryWeight":5,"at":null}"#).unwrap();
        let j = document(&v, Output::Json);
        let pos = |k: &str| j.find(k).unwrap();
        assert!(pos("\"id\"") < pos("\"service\"") && pos("\"service\"") < pos("\"canaryWeight\""), "{j}");
        assert!(j.contains("\"canaryWeight\": 5"), "numbers stay numbers: {j}");
    }
}
