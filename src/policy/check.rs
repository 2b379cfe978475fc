//! A policy file to a policy, or every problem in it, each located at the exact line and column of
//! the YAML node it is about (from the parser's spans) and said once, in the policy's own terms.

use std::collections::HashMap;
use std::path::Path;

use granit_parser::{Event, Parser};

use super::{FieldError, Policy, PolicyFileError};

/// One step of a field path: `metrics[1].max` is `Key(metrics) Index(1) Key(max)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

type FieldPath = Vec<Seg>;

/// `metrics[1].max` → segments (the form of [`FieldError::field`]).
fn parse_path(s: &str) -> FieldPath {
    let mut out = vec![];
    for part in s.split('.').filter(|p| !p.is_empty()) {
        let mut it = part.split('[');
        if let Some(k) = it.next().filter(|k| !k.is_empty()) {
            out.push(Seg::Key(k.to_string()));
        }
        out.extend(it.filter_map(|i| i.trim_end_matches(']').parse().ok()).map(Seg::Index));
    }
    out
}

fn show_path(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Where each node of the document starts (line, column; 1-based): values, and keys of mappings.
#[derive(Default)]
struct Positions {
    value: HashMap<FieldPath, (usize, usize)>,
    key: HashMap<FieldPath, (usize, usize)>,
}

enum Frame {
    /// `key` is the key whose value comes next; `None` while a key is expected.
    Map {
        path: FieldPath,
        key: Option<String>,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
}

impl Positions {
    /// Walk the parser's events; a syntax error comes back located.
    fn scan(src: &str) -> Result<Positions, ((usize, usize), String)> {
        let mut pos = Positions::default();
        let mut stack: Vec<Frame> = vec![];
        for ev in Parser::new_from_str(src) {
            let (event, span) = ev.map_err(|e| ((e.marker().line().max(1), e.marker().col() + 1), e.info()))?;
            let at = (span.start.line(), span.start.col() + 1);
            let is_node = matches!(
                event,
                Event::Scalar(..) | Event::Alias(..) | Event::MappingStart(..) | Event::SequenceStart(..)
            );
            if is_node {
                let child = match stack.last_mut() {
                    None => Some(vec![]),
                    Some(Frame::Map { path, key }) => match key.take() {
                        Some(k) => Some([path.clone(), vec![Seg::Key(k)]].concat()),
                        None => {
                            // This node is a key: plain keys are remembered, complex ones only skipped.
                            let k = match &event {
                                Event::Scalar(k, ..) => k.to_string(),
                                _ => "?".to_string(),
                            };
                            pos.key.entry([path.clone(), vec![Seg::Key(k.clone())]].concat()).or_insert(at);
                            *key = Some(k);
                            None
                        }
                    },
                    Some(Frame::Seq { path, next }) => {
                        *next += 1;
                        Some([path.clone(), vec![Seg::Index(*next - 1)]].concat())
                    }
                };
                let path = match child {
                    Some(p) => {
                        pos.value.entry(p.clone()).or_insert(at);
                        p
                    }
                    None => vec![Seg::Key("?".into())],
                };
                match event {
                    Event::MappingStart(..) => stack.push(Frame::Map { path, key: None }),
                    Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                    _ => {}
                }
            } else if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
            }
        }
        Ok(pos)
    }

    /// The node at `p`, else its nearest ancestor in the file (a defaulted field has no line).
    fn value_at(&self, p: &[Seg]) -> (usize, usize) {
        (0..=p.len()).rev().find_map(|n| self.value.get(&p[..n]).copied()).unwrap_or((1, 1))
    }

    /// The key of the entry at `p` (where an unknown field is written), else [`Self::value_at`].
    fn key_at(&self, p: &[Seg]) -> (usize, usize) {
        self.key.get(p).copied().unwrap_or_else(|| self.value_at(p))
    }
}

/// Line and column of the field `path` (e.g. `name`) in `src`; (1, 1) when it is not there.
pub fn position(src: &str, path: &str) -> (usize, usize) {
    Positions::scan(src).map(|p| p.value_at(&parse_path(path))).unwrap_or((1, 1))
}

/// Fields without which nothing else can be checked; stand-ins let the rest be checked.
const REQUIRED: &[(&str, &str)] = &[("name", "placeholder"), ("strategy", "canary")];

/// Parse and validate a policy file; on failure every problem found, in the order of the file.
pub fn parse_all(file: &Path, src: &str) -> Result<Policy, Vec<PolicyFileError>> {
    let located = |(line, column): (usize, usize), message: String| PolicyFileError {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let pos = Positions::scan(src).map_err(|(at, m)| vec![located(at, format!("not valid YAML: {m}"))])?;
    let mut doc: yaml_serde::Value = yaml_serde::from_str(src).map_err(|e| {
        let at = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        vec![located(at, format!("not valid YAML: {}", strip_location(&e.to_string())))]
    })?;
    if !doc.is_mapping() {
        return Err(vec![located((1, 1), "a policy is a mapping of fields: name, strategy, steps, ...".into())]);
    }
    let mut problems: Vec<((usize, usize), String)> = vec![];
    // Subtrees with a problem reported already: nothing more is said about them.
    let mut reported: Vec<FieldPath> = vec![];
    let mut check_rules = true;
    // Each round reports one problem and takes its field out, so the next round finds the next one.
    for _ in 0..100 {
        let e = match serde_path_to_error::deserialize::<_, Policy>(doc.clone()) {
            Ok(policy) => {
                let rules = if check_rules { policy.problems() } else { vec![] };
                for FieldError { field, message } in rules {
                    let p = parse_path(&field);
                    // Gates are checked against the steps: with broken steps that says nothing.
                    let needs_steps = field.starts_with("gates");
                    // A metric's bounds are checked together: with one reported, "give min, max or
                    // both" or "min is greater than max" would be about a bound taken out.
                    let about_reported = |r: &FieldPath| {
                        p.starts_with(r)
                            || (needs_steps && r[..] == [Seg::Key("steps".into())])
                            || bounds(&p).is_some_and(|parent| bounds(r) == Some(parent))
                    };
                    if !reported.iter().any(about_reported) {
                        problems.push((pos.value_at(&p), format!("{field}: {message}")));
                    }
                }
                if problems.is_empty() {
                    return Ok(policy);
                }
                break;
            }
            Err(e) => e,
        };
        let path: FieldPath = e
            .path()
            .iter()
            .map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
                serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
                serde_path_to_error::Segment::Unknown => Seg::Key("?".into()),
            })
            .collect();
        let msg = e.into_inner().to_string();
        if let Some(field) = between(&msg, "unknown field `", "`") {
            // The path ends at the unknown key, or at its mapping.
            let p = match path.last() {
                Some(Seg::Key(k)) if k == field => path.clone(),
                _ => [path.clone(), vec![Seg::Key(field.to_string())]].concat(),
            };
            problems.push((pos.key_at(&p), format!("{}: {}", show_path(&p), unknown_field(field, &msg))));
            if remove(&mut doc, &p) {
                continue;
            }
            reported.push(p);
        }
        let consequence = !path.is_empty() && reported.iter().any(|r| r.starts_with(&path));
        if !consequence {
            let (p, what) = match between(&msg, "missing field `", "`") {
                Some(field) => ([path.clone(), vec![Seg::Key(field.to_string())]].concat(), "required".to_string()),
                None => (path.clone(), humanize(&msg)),
            };
            problems.push((pos.value_at(&path), format!("{}: {what}", show_path(&p))));
            reported.push(p);
        }
        // An optional field inside an item: take only it out, so the other items are still checked.
        if !consequence && path.len() > 1 && !msg.starts_with("missing field") && remove(&mut doc, &path) {
            continue;
        }
        // Else the whole top-level field (a stand-in for a required one).
        let top = match path.first() {
            Some(Seg::Key(k)) => k.clone(),
            _ => match between(&msg, "missing field `", "`") {
                Some(f) => f.to_string(),
                None => break,
            },
        };
        reported.push(vec![Seg::Key(top.clone())]);
        if let Some(map) = doc.as_mapping_mut() {
            match REQUIRED.iter().find(|(k, _)| *k == top) {
                Some((k, stand_in)) => {
                    if *k == "strategy" {
                        // Which rules apply depends on the strategy.
                        check_rules = false;
                    }
                    map.insert((*k).into(), (*stand_in).into());
                }
                None => {
                    map.remove(top.as_str());
                }
            }
        }
    }
    problems.sort_by_key(|(at, _)| *at);
    problems.dedup();
    Err(problems.into_iter().map(|(at, m)| located(at, m)).collect())
}

/// The metric a `min`/`max` path belongs to.
fn bounds(q: &[Seg]) -> Option<&[Seg]> {
    match q.split_last() {
        Some((Seg::Key(k), parent)) if k == "min" || k == "max" => Some(parent),
        _ => None,
    }
}

/// Remove the entry at `p` (a mapping key) from the document; false if there is none.
fn remove(doc: &mut yaml_serde::Value, p: &[Seg]) -> bool {
    let Some((Seg::Key(last), parent)) = p.split_last() else { return false };
    let mut node = doc;
    for seg in parent {
        let next = match seg {
            Seg::Key(k) => node.get_mut(k.as_str()),
            Seg::Index(i) => node.get_mut(*i),
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.as_mapping_mut().and_then(|m| m.remove(last.as_str())).is_some()
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// "unknown field `intervall`, expected one of `name`, ..." → a suggestion or the known fields.
fn unknown_field(field: &str, msg: &str) -> String {
    let known: Vec<&str> = msg.split('`').skip(3).step_by(2).collect();
    let best = known.iter().map(|k| (distance(field, k), *k)).min();
    match best {
        Some((d, k)) if d <= 2 || k.to_lowercase() == field.to_lowercase() => {
            format!("unknown field (did you mean `{k}`?)")
        }
        _ if known.is_empty() => "unknown field".into(),
        _ => format!("unknown field; known: {}", known.join(", ")),
    }
}

/// Edit distance, for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// serde's wording, in the policy's terms: no Rust type names, the expectation first.
fn humanize(msg: &str) -> String {
    let kind = |t: &str| -> String {
        match t.trim() {
            "u8" => "a whole number from 0 to 255".into(),
            "u16" | "u32" | "u64" | "usize" => "a whole number".into(),
            "f32" | "f64" => "a number".into(),
            "a sequence" => "a list".into(),
            "a map" => "a mapping".into(),
            "a string" | "a borrowed string" => "text".into(),
            t if t.starts_with("struct ") => "a mapping".into(),
            t => t.to_string(),
        }
    };
    if msg.contains("time unit") || msg.starts_with("expected number at") || msg.contains("number is too large") {
        return format!("not a duration; write e.g. 30s, 5m, 1h30m ({msg})");
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            let got = got.replace('`', "");
            return format!("expected {}, got {got}", kind(expected));
        }
    }
    msg.to_string()
}

/// yaml_serde's "... at line 3 column 5" (the position is given separately).
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(src: &str) -> Vec<String> {
        match parse_all(Path::new("p.yaml"), src) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn positions_are_exact() {
        let src = "name: x\nstrategy: canary\nsteps: [5, 100]\nmetrics:\n  - name: a\n    template: success-rate\n    min: 99\n  - name: b\n    template: latency-p95\n    max: fast\n";
        assert_eq!(
            problems(src),
            ["p.yaml:10:10: metrics[1].max: expected a number or a duration such as 500ms, got \"fast\""]
        );
    }

    #[test]
    fn every_problem_once_in_file_order() {
        let src = "name: Bad_Name\nstrategy: canary\nintervall: 1m\nsteps: [5, 50]\nthreshold: lots\nmetrics:\n  - name: a\n    template: nope\n    min: 1\n  - name: b\n    query: 'x{a=\"{{nope}}\"}'\n    max: 1\n";
        let p = problems(src);
        assert_eq!(
            p,
            [
                "p.yaml:1:7: name: must be a lowercase DNS label (a-z, 0-9, '-')",
                "p.yaml:3:1: intervall: unknown field (did you mean `interval`?)",
                "p.yaml:4:8: steps: the last step must be 100, got [5, 50]",
                "p.yaml:5:12: threshold: expected a whole number, got string \"lots\"",
                "p.yaml:8:15: metrics[0].template: unknown template \"nope\"; built-in: success-rate, error-rate, latency-p95, latency-p99, latency-mean, request-count",
                "p.yaml:11:12: metrics[1].query: unknown variable {{nope}}; known: namespace, service, version, stable_version, interval, target",
            ],
            "{p:#?}"
        );
    }

    #[test]
    fn missing_fields_and_syntax() {
        assert_eq!(problems("steps: [100]\n"), ["p.yaml:1:1: name: required", "p.yaml:1:1: strategy: required"]);
        assert_eq!(
            problems("name: x\nstrategy: canary\nsteps: [100\n"),
            ["p.yaml:3:8: not valid YAML: unclosed bracket '['"]
        );
        assert_eq!(problems("- a\n"), ["p.yaml:1:1: a policy is a mapping of fields: name, strategy, steps, ..."]);
    }
}
