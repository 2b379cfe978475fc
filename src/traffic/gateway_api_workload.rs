//! Routing preparation and clean-up of the `gateway-api` router for workload releases (SPEC §4
//! "workload"). Between releases the weighted rule holds only the stable Service (which selects the
//! stable pods by `version`). Before the first shift vane creates the canary Service (selecting the
//! canary Deployment's pods) and adds a backendRef to it at weight 0 — a copy of the stable one,
//! so port and kind match; once promoted the stable Service selects the new version and the rule
//! points only at it, at 100; on retirement the canary Service goes. Every route write is a JSON
//! patch guarded by the resourceVersion that was read, as the router's weight writes are.

use serde_json::{Value, json};

/// Is this backendRef the Service `name` of the route's namespace? (As the router judges it.)
fn is_service(b: &Value, name: &str, namespace: &str) -> bool {
    let s = |k: &str| b.get(k).and_then(Value::as_str);
    s("name") == Some(name)
        && s("kind").is_none_or(|k| k == "Service")
        && s("group").is_none_or(str::is_empty)
        && s("namespace").is_none_or(|n| n == namespace)
}

/// The weighted rule of a workload release: the named one, else the first whose backendRefs include
/// the stable Service; its backendRefs may only be the stable and canary Services.
fn rule_of(spec: &Value, namespace: &str, rule: Option<&str>, stable: &str, canary: &str) -> Result<usize, String> {
    let rules = spec.get("rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let refs = |r: &Value| r.get("backendRefs").and_then(Value::as_array).cloned().unwrap_or_default();
    let index = match rule {
        Some(name) => rules
            .iter()
            .position(|r| r.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("has no rule named {name:?}"))?,
        None => rules
            .iter()
            .position(|r| refs(r).iter().any(|b| is_service(b, stable, namespace)))
            .ok_or_else(|| format!("has no rule with a backendRef to the Service {stable:?}"))?,
    };
    let refs = refs(&rules[index]);
    let ours = |b: &Value| is_service(b, stable, namespace) || is_service(b, canary, namespace);
    if !refs.iter().any(|b| is_service(b, stable, namespace)) || !refs.iter().all(ours) {
        return Err(format!(
            "rule #{index} must send to the Service {stable:?} only (and {canary:?}, which vane adds): a workload \
             release moves all of that rule's traffic"
        ));
    }
    Ok(index)
}

fn refs_of(spec: &Value, index: usize) -> Vec<Value> {
    spec.pointer(&format!("/rules/{index}/backendRefs")).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Ops adding the canary backendRef at weight 0 (none if it is there).
pub fn prepare_ops(
    spec: &Value,
    namespace: &str,
    rule: Option<&str>,
    stable: &str,
    canary: &str,
) -> Result<Vec<Value>, String> {
    let i = rule_of(spec, namespace, rule, stable, canary)?;
    let refs = refs_of(spec, i);
    if refs.iter().any(|b| is_service(b, canary, namespace)) {
        return Ok(vec![]);
    }
    let mut ops = vec![];
    let mut added = refs.iter().find(|b| is_service(b, stable, namespace)).cloned().unwrap_or(Value::Null);
    added["name"] = json!(canary);
    added["weight"] = json!(0);
    let s = refs.iter().position(|b| is_service(b, stable, namespace)).unwrap_or_default();
    if refs[s].get("weight").and_then(Value::as_i64) != Some(100) {
        ops.push(json!({ "op": "add", "path": format!("/spec/rules/{i}/backendRefs/{s}/weight"), "value": 100 }));
    }
    ops.push(json!({ "op": "add", "path": format!("/spec/rules/{i}/backendRefs/-"), "value": added }));
    Ok(ops)
}

/// Ops leaving only the stable backendRef, at 100 (none if that is so).
pub fn final_ops(
    spec: &Value,
    namespace: &str,
    rule: Option<&str>,
    stable: &str,
    canary: &str,
) -> Result<Vec<Value>, String> {
    let i = rule_of(spec, namespace, rule, stable, canary)?;
    let refs = refs_of(spec, i);
    let mut ops = vec![];
    let s = refs.iter().position(|b| is_service(b, stable, namespace)).unwrap_or_default();
    if refs[s].get("weight").and_then(Value::as_i64) != Some(100) {
        ops.push(json!({ "op": "add", "path": format!("/spec/rules/{i}/backendRefs/{s}/weight"), "value": 100 }));
    }
    // Highest index first, so each removal leaves the next one's index valid.
    let canaries: Vec<usize> = (0..refs.len()).filter(|&j| is_service(&refs[j], canary, namespace)).collect();
    ops.extend(
        canaries.iter().rev().map(|j| json!({ "op": "remove", "path": format!("/spec/rules/{i}/backendRefs/{j}") })),
    );
    Ok(ops)
}

/// The rule holds only the stable backendRef (as after promotion, or before the first release).
pub fn only_stable(spec: &Value, namespace: &str, rule: Option<&str>, stable: &str, canary: &str) -> bool {
    rule_of(spec, namespace, rule, stable, canary)
        .is_ok_and(|i| !refs_of(spec, i).iter().any(|b| is_service(b, canary, namespace)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(refs: Value) -> Value {
        json!({ "rules": [
            { "name": "admin", "backendRefs": [{ "name": "admin", "port": 8080 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }], "backendRefs": refs } ] })
    }

    fn apply(spec: &Value, ops: &[Value]) -> Value {
        let mut doc = json!({ "spec": spec });
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc["spec"].clone()
    }

    #[test]
    fn preparing_adds_a_copy_of_the_stable_backend_ref_at_weight_0_once() {
        let before = spec(json!([{ "group": "", "kind": "Service", "name": "agent", "port": 8080, "weight": 1 }]));
        let ops = prepare_ops(&before, "prod", None, "agent", "agent-canary").unwrap();
        let after = apply(&before, &ops);
        assert_eq!(
            after["rules"][1]["backendRefs"],
            json!([{ "group": "", "kind": "Service", "name": "agent", "port": 8080, "weight": 100 },
                   { "group": "", "kind": "Service", "name": "agent-canary", "port": 8080, "weight": 0 }])
        );
        assert_eq!(after["rules"][0], before["rules"][0], "other rules untouched");
        assert_eq!(prepare_ops(&after, "prod", None, "agent", "agent-canary").unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn promotion_leaves_only_the_stable_backend_ref_at_100() {
        let during = spec(json!([{ "name": "agent-canary", "port": 8080, "weight": 100 },
                                 { "name": "agent", "port": 8080, "weight": 0 }]));
        let ops = final_ops(&during, "prod", None, "agent", "agent-canary").unwrap();
        let after = apply(&during, &ops);
        assert_eq!(after["rules"][1]["backendRefs"], json!([{ "name": "agent", "port": 8080, "weight": 100 }]));
        assert!(only_stable(&after, "prod", None, "agent", "agent-canary"));
        assert!(!only_stable(&during, "prod", None, "agent", "agent-canary"));
        assert_eq!(final_ops(&after, "prod", None, "agent", "agent-canary").unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn a_rule_with_other_backends_or_without_the_stable_service_is_refused() {
        let shared = spec(json!([{ "name": "agent", "port": 8080 }, { "name": "other", "port": 8080 }]));
        let e = prepare_ops(&shared, "prod", None, "agent", "agent-canary").unwrap_err();
        assert!(e.contains("must send to the Service \"agent\" only"), "{e}");
        let e = prepare_ops(&spec(json!([])), "prod", None, "agent", "agent-canary").unwrap_err();
        assert!(e.contains("no rule with a backendRef"), "{e}");
        let e = prepare_ops(&shared, "prod", Some("admin"), "agent", "agent-canary").unwrap_err();
        assert!(e.contains("rule #0"), "{e}");
    }
}
