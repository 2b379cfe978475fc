//! Routing preparation and clean-up of the `istio` router for workload releases (SPEC §4
//! "workload"): which JSON-patch operations bring a VirtualService and its DestinationRule into a
//! [`RouteShape`]. Pure functions of the objects' specs; the router reads, calls these, and writes
//! with a resourceVersion guard. An empty list means "already in that shape" (nothing is written).

use serde_json::{Value, json};

use super::istio::{fqdn, locate};
use crate::rollout::ports::RouteShape;

fn http(spec: &Value) -> &[Value] {
    spec.get("http").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn dests(route: &Value) -> &[Value] {
    route.get("route").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

fn subset(dest: &Value) -> Option<&str> {
    dest.pointer("/destination/subset").and_then(Value::as_str)
}

fn host(dest: &Value) -> &str {
    dest.pointer("/destination/host").and_then(Value::as_str).unwrap_or_default()
}

fn name(route: &Value) -> Option<&str> {
    route.get("name").and_then(Value::as_str)
}

fn header_match(route: &Value) -> bool {
    let matches = route.get("match").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    matches.iter().any(|m| m.get("headers").is_some())
}

/// The weighted route before the canary is added: the named one, else the first route without a
/// `match` that sends to the stable subset, else the first with both subsets.
fn weighted_index(spec: &Value, route: Option<&str>, stable: &str, canary: &str) -> Result<usize, String> {
    let http = http(spec);
    if let Some(n) = route {
        return http.iter().position(|r| name(r) == Some(n)).ok_or_else(|| format!("has no http route named {n:?}"));
    }
    if let Ok(w) = locate(spec, None, stable, canary) {
        return Ok(w.http_index);
    }
    http.iter()
        .position(|r| r.get("match").is_none() && dests(r).iter().any(|d| subset(d) == Some(stable)))
        .ok_or_else(|| format!("has no http route without a match that sends to subset {stable:?}"))
}

/// The promoted shape: the weighted route sends only to the canary subset and nothing names the
/// stable subset any more.
pub fn is_final(spec: &Value, route: Option<&str>, stable: &str, canary: &str) -> bool {
    let http = http(spec);
    let only_canary = |r: &Value| dests(r).len() == 1 && subset(&dests(r)[0]) == Some(canary);
    let weighted = match route {
        Some(n) => http.iter().any(|r| name(r) == Some(n) && only_canary(r)),
        None => http.iter().any(|r| r.get("match").is_none() && only_canary(r)),
    };
    weighted && !http.iter().flat_map(dests).any(|d| subset(d) == Some(stable))
}

/// VirtualService operations for `shape`. `namespace`: the object's (short host names are relative to it).
pub fn virtual_service_ops(
    spec: &Value,
    namespace: &str,
    route: Option<&str>,
    stable: &str,
    canary: &str,
    shape: RouteShape,
) -> Result<Vec<Value>, String> {
    if shape == RouteShape::Final && is_final(spec, route, stable, canary) {
        return Ok(vec![]);
    }
    let http = http(spec);
    let i = weighted_index(spec, route, stable, canary)?;
    let weighted = dests(&http[i]);
    let Some(si) = weighted.iter().position(|d| subset(d) == Some(stable)) else {
        return Err(format!("route #{i} has no destination with subset {stable:?}"));
    };
    let ci = weighted.iter().position(|d| subset(d) == Some(canary));
    if weighted.len() > 1 + ci.is_some() as usize {
        return Err(format!("route #{i} has destinations other than subsets {stable:?} and {canary:?}"));
    }
    let service = host(&weighted[si]).to_string();
    let same_host = |d: &Value| fqdn(host(d), namespace) == fqdn(&service, namespace);
    let mut ops = vec![];
    // Header-match routes with one destination of this service: the "preview the canary" routes.
    let previews = http.iter().enumerate().filter(|(j, r)| {
        *j != i && header_match(r) && dests(r).len() == 1 && same_host(&dests(r)[0]) && subset(&dests(r)[0]).is_some()
    });
    let repoint = |j: usize, to: &str| json!({ "op": "replace", "path": format!("/spec/http/{j}/route/0/destination/subset"), "value": to });
    match shape {
        RouteShape::Prepared => {
            if ci.is_none() {
                ops.push(json!({ "op": "add", "path": format!("/spec/http/{i}/route/{si}/weight"), "value": 100 }));
                ops.push(json!({ "op": "add", "path": format!("/spec/http/{i}/route/-"),
                                 "value": { "destination": { "host": service, "subset": canary }, "weight": 0 } }));
            }
            for (j, r) in previews {
                if subset(&dests(r)[0]) != Some(canary) {
                    ops.push(repoint(j, canary));
                }
            }
        }
        RouteShape::Retired => {}
        RouteShape::Restored => {
            for (j, r) in previews {
                if subset(&dests(r)[0]) == Some(canary) {
                    ops.push(repoint(j, stable));
                }
            }
        }
        RouteShape::Final => {
            ops.push(json!({ "op": "replace", "path": format!("/spec/http/{i}/route"),
                             "value": [{ "destination": { "host": service, "subset": canary }, "weight": 100 }] }));
            for (j, r) in http.iter().enumerate().filter(|(j, _)| *j != i) {
                for (k, d) in dests(r).iter().enumerate() {
                    if subset(d) == Some(stable) && same_host(d) {
                        let path = format!("/spec/http/{j}/route/{k}/destination/subset");
                        ops.push(json!({ "op": "replace", "path": path, "value": canary }));
                    }
                }
            }
        }
    }
    Ok(ops)
}

/// DestinationRule operations for `shape`: the canary subset added like the stable one (its labels
/// with `version: <version>`), or the stable subset removed once promoted.
pub fn destination_rule_ops(
    spec: &Value,
    stable: &str,
    canary: &str,
    version: &str,
    shape: RouteShape,
) -> Result<Vec<Value>, String> {
    let subsets = spec.get("subsets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let find = |n: &str| subsets.iter().position(|s| s.get("name").and_then(Value::as_str) == Some(n));
    match shape {
        RouteShape::Prepared if find(canary).is_none() => {
            let Some(s) = find(stable) else { return Err(format!("has no subset {stable:?}")) };
            let mut sub = subsets[s].clone();
            sub["name"] = json!(canary);
            sub["labels"]["version"] = json!(version);
            let path = if subsets.is_empty() { "/spec/subsets" } else { "/spec/subsets/-" };
            let value = if subsets.is_empty() { json!([sub]) } else { sub };
            Ok(vec![json!({ "op": "add", "path": path, "value": value })])
        }
        RouteShape::Final => match (find(stable), find(canary)) {
            (Some(s), Some(_)) => Ok(vec![json!({ "op": "remove", "path": format!("/spec/subsets/{s}") })]),
            (None, Some(_)) => Ok(vec![]),
            (_, None) => Err(format!("has no subset {canary:?} to keep")),
        },
        _ => Ok(vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::ports::RouteShape::*;

    /// The deployment standard's objects between releases: the header route on the previous canary
    /// (now stable), the weighted route on stable only.
    fn steady() -> Value {
        json!({ "hosts": ["agent-service"], "http": [
            { "match": [{ "headers": { "canary": { "exact": "true" } } }],
              "route": [{ "destination": { "host": "agent-service", "subset": "v1-0-0" } }] },
            { "route": [{ "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 }] } ] })
    }

    fn apply(spec: &Value, ops: Vec<Value>) -> Value {
        let mut doc = json!({ "spec": spec });
        let patch: json_patch_lite::Patch = ops;
        json_patch_lite::apply(&mut doc, &patch);
        doc["spec"].clone()
    }

    /// A tiny JSON-patch applier for the ops these functions emit (add, replace, remove).
    mod json_patch_lite {
        use serde_json::Value;
        pub type Patch = Vec<Value>;
        pub fn apply(doc: &mut Value, ops: &Patch) {
            for op in ops {
                let path = op["path"].as_str().unwrap();
                let (parent, last) = path.rsplit_once('/').unwrap();
                let target = doc.pointer_mut(parent).unwrap();
                match (op["op"].as_str().unwrap(), target) {
                    ("remove", Value::Array(a)) => {
                        a.remove(last.parse::<usize>().unwrap());
                    }
                    ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
                    (_, Value::Array(a)) => a[last.parse::<usize>().unwrap()] = op["value"].clone(),
                    (_, Value::Object(o)) => {
                        o.insert(last.to_string(), op["value"].clone());
                    }
                    _ => panic!("bad path {path}"),
                }
            }
        }
    }

    #[test]
    fn prepared_adds_a_zero_destination_and_repoints_the_header_route() {
        let ops = virtual_service_ops(&steady(), "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap();
        let after = apply(&steady(), ops);
        assert_eq!(after["http"][0]["route"][0]["destination"]["subset"], "v1-1-0");
        assert_eq!(
            after["http"][1]["route"],
            json!([{ "destination": { "host": "agent-service", "subset": "v1-0-0" }, "weight": 100 },
                   { "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 0 }])
        );
        // Idempotent: a second reconcile writes nothing.
        assert_eq!(
            virtual_service_ops(&after, "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap(),
            Vec::<Value>::new()
        );
        // The weighted route is then found by the weight-setting code.
        assert_eq!(locate(&after, None, "v1-0-0", "v1-1-0").unwrap().http_index, 1);
    }

    #[test]
    fn restored_points_header_routes_back_to_stable() {
        let prepared =
            apply(&steady(), virtual_service_ops(&steady(), "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap());
        let restored =
            apply(&prepared, virtual_service_ops(&prepared, "prod", None, "v1-0-0", "v1-1-0", Restored).unwrap());
        assert_eq!(restored["http"][0], steady()["http"][0]);
    }

    #[test]
    fn final_leaves_only_the_new_subset_and_is_recognised() {
        let prepared =
            apply(&steady(), virtual_service_ops(&steady(), "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap());
        let done = apply(&prepared, virtual_service_ops(&prepared, "prod", None, "v1-0-0", "v1-1-0", Final).unwrap());
        assert_eq!(
            done["http"][1]["route"],
            json!([{ "destination": { "host": "agent-service", "subset": "v1-1-0" }, "weight": 100 }])
        );
        assert_eq!(done["http"][0]["route"][0]["destination"]["subset"], "v1-1-0");
        assert!(is_final(&done, None, "v1-0-0", "v1-1-0"));
        assert!(!is_final(&prepared, None, "v1-0-0", "v1-1-0"));
        assert!(virtual_service_ops(&done, "prod", None, "v1-0-0", "v1-1-0", Final).unwrap().is_empty());
    }

    #[test]
    fn other_services_and_extra_destinations_are_left_alone_or_refused() {
        let mut spec = steady();
        spec["http"][0]["route"][0]["destination"]["host"] = json!("payments");
        let ops = virtual_service_ops(&spec, "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap();
        assert!(ops.iter().all(|o| !o["path"].as_str().unwrap().starts_with("/spec/http/0")), "{ops:?}");
        spec["http"][1]["route"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "destination": { "host": "agent-service", "subset": "x" } }));
        assert!(
            virtual_service_ops(&spec, "prod", None, "v1-0-0", "v1-1-0", Prepared).unwrap_err().contains("other than")
        );
    }

    #[test]
    fn destination_rule_gets_the_canary_subset_like_the_stable_one_then_loses_the_old() {
        let dr = json!({ "host": "agent-service", "trafficPolicy": {},
                         "subsets": [{ "name": "v1-0-0", "labels": { "version": "v1.0.0", "tier": "api" } }] });
        let ops = destination_rule_ops(&dr, "v1-0-0", "v1-1-0", "v1.1.0", Prepared).unwrap();
        let after = apply(&dr, ops);
        assert_eq!(after["subsets"][1], json!({ "name": "v1-1-0", "labels": { "version": "v1.1.0", "tier": "api" } }));
        assert!(destination_rule_ops(&after, "v1-0-0", "v1-1-0", "v1.1.0", Prepared).unwrap().is_empty());
        let done = apply(&after, destination_rule_ops(&after, "v1-0-0", "v1-1-0", "v1.1.0", Final).unwrap());
        assert_eq!(done["subsets"], json!([{ "name": "v1-1-0", "labels": { "version": "v1.1.0", "tier": "api" } }]));
        assert!(destination_rule_ops(&done, "v1-0-0", "v1-1-0", "v1.1.0", Final).unwrap().is_empty());
    }
}
