//! The policy's `canaryMatch` as a route of its own, for the routers whose objects are ordered lists
//! of routes: Istio's `spec.http` and Gateway API's `spec.rules`.
//!
//! While traffic is split (0 < canary < 100) requests carrying the headers reach only the canary:
//! - if the object already has such a header route (the deployment standard's `canary: "true"` route),
//!   it is pointed at the canary; if it pointed elsewhere, what it pointed at is kept in the annotation
//!   [`RESTORE`] and put back at the end;
//! - else vane inserts a copy of the weighted route directly above it, named [`ROUTE_NAME`], whose
//!   matches are the weighted route's own, each combined with the headers, and whose only target is
//!   the canary (Istio takes the first matching route; Gateway API prefers the rule with more header
//!   matches, so both send those requests there).
//!
//! At 0 and 100 % (the end of every rollout: rollback, abort, promotion) the inserted route is removed
//! and a re-pointed one restored, in the same guarded patch as the weights, so the object ends as it
//! was before the rollout except for the two weights.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use serde_json::{Value, json};

use super::k8s::pointer_segment;
use crate::policy::CanaryMatch;

/// The `name` of the route vane inserts.
pub const ROUTE_NAME: &str = "vane-canary-match";
/// Annotation holding the targets of a pre-existing header route that vane re-pointed.
pub const RESTORE: &str = "vane.dev/canary-match-restore";

/// How one object kind spells routes, matches and header conditions.
pub struct Layout {
    /// JSON pointer of the route list.
    pub list: &'static str,
    /// Member holding a route's match blocks.
    pub matches: &'static str,
    /// Member holding a route's targets.
    pub targets: &'static str,
    /// A match block's exact header conditions; None when it has no headers or non-exact ones.
    pub headers_of: fn(&Value) -> Option<BTreeMap<String, String>>,
    /// The match block `base` with the exact header conditions `headers` added.
    pub with_headers: fn(&Value, &BTreeMap<String, String>) -> Value,
    /// Remove from the copy of the weighted route what it must not carry: vane's own mirror of the
    /// canary (the second argument is the canary target).
    pub strip: fn(&mut Value, &Value),
}

fn is_vane(route: &Value) -> bool {
    route.get("name").and_then(Value::as_str) == Some(ROUTE_NAME)
}

/// A route that already sends exactly the `canaryMatch` requests to one target.
fn is_header_route(l: &Layout, route: &Value, cm: &[CanaryMatch]) -> bool {
    let blocks = route.get(l.matches).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let targets = route.get(l.targets).and_then(Value::as_array).map_or(0, Vec::len);
    if is_vane(route) || targets != 1 || blocks.len() != cm.len() {
        return false;
    }
    let mut have: Vec<BTreeMap<String, String>> = blocks.iter().filter_map(l.headers_of).collect();
    let mut want: Vec<BTreeMap<String, String>> = cm.iter().map(|c| c.headers.clone()).collect();
    have.sort();
    want.sort();
    have == want
}

/// The route vane inserts: the weighted route, renamed, its matches combined with the headers, the
/// canary as its only target.
pub fn header_route(l: &Layout, weighted: &Value, canary_target: &Value, cm: &[CanaryMatch]) -> Value {
    let base: Vec<Value> = match weighted.get(l.matches).and_then(Value::as_array) {
        Some(b) if !b.is_empty() => b.clone(),
        _ => vec![json!({})],
    };
    let blocks: Vec<Value> =
        base.iter().flat_map(|b| cm.iter().map(move |c| (l.with_headers)(b, &c.headers))).collect();
    let mut route = weighted.clone();
    (l.strip)(&mut route, canary_target);
    if let Some(o) = route.as_object_mut() {
        o.insert("name".into(), json!(ROUTE_NAME));
        o.insert(l.matches.into(), Value::Array(blocks));
        o.insert(l.targets.into(), json!([canary_target]));
    }
    route
}

fn restore_annotation(o: &DynamicObject) -> Option<Value> {
    let raw = o.metadata.annotations.as_ref()?.get(RESTORE)?;
    serde_json::from_str(raw).ok()
}

fn annotation_path() -> String {
    format!("/metadata/annotations/{}", pointer_segment(RESTORE))
}

/// The JSON-patch ops that bring the header route to its state for `active`; they go after the
/// weight ops of the same patch (an insert or removal shifts the indexes after it).
pub fn ops(
    l: &Layout,
    o: &DynamicObject,
    weighted: usize,
    canary_target: &Value,
    cm: &[CanaryMatch],
    active: bool,
) -> Vec<Value> {
    if cm.is_empty() {
        return vec![];
    }
    let routes = o.data.pointer(l.list).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mine = routes.iter().position(is_vane);
    let existing = routes.iter().position(|r| is_header_route(l, r, cm));
    let saved = restore_annotation(o);
    let mut ops = vec![];
    let mut structural = None;
    if active {
        match existing {
            Some(p) => {
                let want = json!([canary_target]);
                let have = routes[p].get(l.targets).cloned().unwrap_or(Value::Null);
                if !same_target(&have, &want) {
                    if saved.is_none() {
                        ops.extend(annotation_add(o, &have));
                    }
                    ops.push(
                        json!({ "op": "replace", "path": format!("{}/{p}/{}", l.list, l.targets), "value": want }),
                    );
                }
            }
            None if mine.is_none() => {
                let route = header_route(l, &routes[weighted], canary_target, cm);
                structural = Some(json!({ "op": "add", "path": format!("{}/{weighted}", l.list), "value": route }));
            }
            None => {}
        }
    } else {
        if let (Some(saved), Some(p)) = (&saved, existing) {
            ops.push(json!({ "op": "replace", "path": format!("{}/{p}/{}", l.list, l.targets), "value": saved }));
        }
        if saved.is_some() {
            ops.push(json!({ "op": "remove", "path": annotation_path() }));
        }
        if let Some(v) = mine {
            structural = Some(json!({ "op": "remove", "path": format!("{}/{v}", l.list) }));
        }
    }
    ops.extend(structural);
    ops
}

/// Two target lists name the same destination (ignoring weights and defaults the server added).
fn same_target(have: &Value, want: &Value) -> bool {
    let key = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .map(|t| {
                    let d = t.get("destination").unwrap_or(t);
                    [d.get("host"), d.get("subset"), d.get("name"), d.get("port")]
                        .map(|x| x.cloned().unwrap_or(Value::Null))
                })
                .collect::<Vec<_>>()
        })
    };
    key(have) == key(want)
}

fn annotation_add(o: &DynamicObject, original: &Value) -> Vec<Value> {
    let value = original.to_string();
    if o.metadata.annotations.is_none() {
        return vec![json!({ "op": "add", "path": "/metadata/annotations", "value": { RESTORE: value } })];
    }
    vec![json!({ "op": "add", "path": annotation_path(), "value": value })]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(pairs: &[(&str, &str)]) -> Vec<CanaryMatch> {
        vec![CanaryMatch { headers: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }]
    }

    fn istio_like() -> Layout {
        crate::traffic::istio::LAYOUT
    }

    fn obj(http: Value) -> DynamicObject {
        serde_json::from_value(
            json!({ "apiVersion": "x/v1", "kind": "X", "metadata": { "name": "x" }, "spec": { "http": http } }),
        )
        .unwrap()
    }

    fn apply(o: &DynamicObject, ops: Vec<Value>) -> DynamicObject {
        let mut v = serde_json::to_value(o).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut v, &patch).unwrap();
        serde_json::from_value(v).unwrap()
    }

    const CANARY: &str = r#"{"destination":{"host":"svc","subset":"new"}}"#;

    #[test]
    fn inserts_above_the_weighted_route_and_removes_it_again() {
        let weighted = json!({ "match": [{ "uri": { "prefix": "/api" } }], "timeout": "5s",
                               "mirror": { "host": "svc", "subset": "new" }, "mirrorPercentage": { "value": 10 },
                               "route": [{ "destination": { "host": "svc", "subset": "old" }, "weight": 100 },
                                         { "destination": { "host": "svc", "subset": "new" }, "weight": 0 }] });
        let before = obj(json!([{ "route": [{ "destination": { "host": "other" } }] }, weighted]));
        let target: Value = serde_json::from_str(CANARY).unwrap();
        let l = istio_like();
        let c = cm(&[("canary", "true")]);
        let on = apply(&before, ops(&l, &before, 1, &target, &c, true));
        assert_eq!(
            on.data["spec"]["http"][1],
            json!({ "name": ROUTE_NAME, "timeout": "5s",
                    "match": [{ "uri": { "prefix": "/api" }, "headers": { "canary": { "exact": "true" } } }],
                    "route": [{ "destination": { "host": "svc", "subset": "new" } }] })
        );
        assert_eq!(on.data["spec"]["http"][2], before.data["spec"]["http"][1], "the weighted route moved down intact");
        assert!(ops(&l, &on, 2, &target, &c, true).is_empty(), "idempotent");
        let off = apply(&on, ops(&l, &on, 2, &target, &c, false));
        assert_eq!(off.data, before.data);
        assert!(ops(&l, &off, 1, &target, &c, false).is_empty());
    }

    #[test]
    fn an_existing_header_route_is_repointed_and_restored() {
        let header = json!({ "match": [{ "headers": { "canary": { "exact": "true" } } }],
                             "route": [{ "destination": { "host": "svc", "subset": "older" } }] });
        let weighted = json!({ "route": [{ "destination": { "host": "svc", "subset": "old" }, "weight": 100 },
                                         { "destination": { "host": "svc", "subset": "new" }, "weight": 0 }] });
        let before = obj(json!([header, weighted]));
        let target: Value = serde_json::from_str(CANARY).unwrap();
        let (l, c) = (istio_like(), cm(&[("canary", "true")]));
        let on = apply(&before, ops(&l, &before, 1, &target, &c, true));
        assert_eq!(on.data["spec"]["http"][0]["route"], json!([target]));
        assert_eq!(on.data["spec"]["http"].as_array().unwrap().len(), 2, "nothing inserted");
        assert!(on.metadata.annotations.as_ref().unwrap().contains_key(RESTORE));
        assert!(ops(&l, &on, 1, &target, &c, true).is_empty(), "idempotent");
        let off = apply(&on, ops(&l, &on, 1, &target, &c, false));
        assert_eq!(off.data, before.data);
        assert!(off.metadata.annotations.unwrap_or_default().is_empty());
        // Already pointing at the canary (the deployment standard): nothing to do, nothing to restore.
        let mut standard = before.clone();
        standard.data["spec"]["http"][0]["route"] = json!([target]);
        assert!(ops(&l, &standard, 1, &target, &c, true).is_empty());
        assert!(ops(&l, &standard, 1, &target, &c, false).is_empty());
    }

    #[test]
    fn several_alternatives_multiply_the_weighted_matches() {
        let weighted = json!({ "match": [{ "uri": { "prefix": "/a" } }, { "uri": { "prefix": "/b" } }],
                               "route": [{ "destination": { "subset": "old" } }, { "destination": { "subset": "new" } }] });
        let c = vec![cm(&[("canary", "true")]).remove(0), cm(&[("x-tester", "qa"), ("x-env", "staging")]).remove(0)];
        let r = header_route(&istio_like(), &weighted, &json!({ "destination": { "subset": "new" } }), &c);
        assert_eq!(r["match"].as_array().unwrap().len(), 4);
        assert_eq!(
            r["match"][3],
            json!({ "uri": { "prefix": "/b" }, "headers": { "x-env": { "exact": "staging" }, "x-tester": { "exact": "qa" } } })
        );
    }
}
