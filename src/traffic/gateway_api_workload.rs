//! Routing preparation and clean-up of the `gateway-api` router for workload releases (SPEC §4
//! "workload"). Between releases the weighted rule holds only the stable Service (which selects the
//! stable pods by `version`). Before the first shift vane creates the canary Service (selecting the
//! canary Deployment's pods) and adds a backendRef to it at weight 0 — a copy of the stable one,
//! so port and kind match; once promoted the stable Service selects the new version and the rule
//! points only at it, at 100; on retirement the canary Service goes. Every route write is a JSON
//! patch guarded by the resourceVersion that was read, as the router's weight writes are.

use serde_json::{Value, json};

use super::gateway_api::{backend_refs, is_service};

/// The weighted rule of a workload release and its two Services.
pub struct Backends<'a> {
    /// The route's (a backendRef without a namespace is in it).
    pub namespace: &'a str,
    /// The rule's `name`; without it, the first rule with a backendRef to `stable`.
    pub rule: Option<&'a str>,
    pub stable: &'a str,
    pub canary: &'a str,
}

impl Backends<'_> {
    fn is(&self, b: &Value, name: &str) -> bool {
        is_service(b, name, self.namespace)
    }

    /// The rule's index and backendRefs; they may only be the stable and canary Services.
    fn rule_of(&self, spec: &Value) -> Result<(usize, Vec<Value>), String> {
        let rules = spec.get("rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let index = match self.rule {
            Some(name) => rules
                .iter()
                .position(|r| r.get("name").and_then(Value::as_str) == Some(name))
                .ok_or_else(|| format!("has no rule named {name:?}"))?,
            None => rules
                .iter()
                .position(|r| backend_refs(r).iter().any(|b| self.is(b, self.stable)))
                .ok_or_else(|| format!("has no rule with a backendRef to the Service {:?}", self.stable))?,
        };
        let refs = backend_refs(&rules[index]).to_vec();
        let ours = |b: &Value| self.is(b, self.stable) || self.is(b, self.canary);
        if !refs.iter().any(|b| self.is(b, self.stable)) || !refs.iter().all(ours) {
            return Err(format!(
                "rule #{index} must send to the Service {:?} only (and {:?}, which vane adds): a workload \
                 release moves all of that rule's traffic",
                self.stable, self.canary
            ));
        }
        Ok((index, refs))
    }

    /// The op setting the stable backendRef's weight to 100, if it is not.
    fn stable_at_100(&self, i: usize, refs: &[Value]) -> Option<Value> {
        let s = refs.iter().position(|b| self.is(b, self.stable))?;
        (refs[s].get("weight").and_then(Value::as_i64) != Some(100))
            .then(|| json!({ "op": "add", "path": format!("/spec/rules/{i}/backendRefs/{s}/weight"), "value": 100 }))
    }

    /// Ops adding the canary backendRef at weight 0, a copy of the stable one (none if it is there).
    pub fn prepare_ops(&self, spec: &Value) -> Result<Vec<Value>, String> {
        let (i, refs) = self.rule_of(spec)?;
        if refs.iter().any(|b| self.is(b, self.canary)) {
            return Ok(vec![]);
        }
        let mut added = refs.iter().find(|b| self.is(b, self.stable)).cloned().unwrap_or(Value::Null);
        added["name"] = json!(self.canary);
        added["weight"] = json!(0);
        let mut ops: Vec<Value> = self.stable_at_100(i, &refs).into_iter().collect();
        ops.push(json!({ "op": "add", "path": format!("/spec/rules/{i}/backendRefs/-"), "value": added }));
        Ok(ops)
    }

    /// Ops leaving only the stable backendRef, at 100 (none if that is so).
    pub fn final_ops(&self, spec: &Value) -> Result<Vec<Value>, String> {
        let (i, refs) = self.rule_of(spec)?;
        let mut ops: Vec<Value> = self.stable_at_100(i, &refs).into_iter().collect();
        // Highest index first, so each removal leaves the next one's index valid.
        let canaries = (0..refs.len()).filter(|&j| self.is(&refs[j], self.canary)).rev();
        ops.extend(canaries.map(|j| json!({ "op": "remove", "path": format!("/spec/rules/{i}/backendRefs/{j}") })));
        Ok(ops)
    }

    /// The rule holds only the stable backendRef (as after promotion, or before the first release).
    pub fn only_stable(&self, spec: &Value) -> bool {
        self.rule_of(spec).is_ok_and(|(_, refs)| !refs.iter().any(|b| self.is(b, self.canary)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(refs: Value) -> Value {
        json!({ "rules": [
            { "name": "admin", "backendRefs": [{ "name": "admin", "port": 8080 }] },
            { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }], "backendRefs": refs } ] })
    }

    const B: Backends<'static> = Backends { namespace: "prod", rule: None, stable: "agent", canary: "agent-canary" };

    fn apply(spec: &Value, ops: &[Value]) -> Value {
        let mut doc = json!({ "spec": spec });
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc["spec"].clone()
    }

    #[test]
    fn preparing_adds_a_copy_of_the_stable_backend_ref_at_weight_0_once() {
        let before = spec(json!([{ "group": "", "kind": "Service", "name": "agent", "port": 8080, "weight": 1 }]));
        let ops = B.prepare_ops(&before).unwrap();
        let after = apply(&before, &ops);
        assert_eq!(
            after["rules"][1]["backendRefs"],
            json!([{ "group": "", "kind": "Service", "name": "agent", "port": 8080, "weight": 100 },
                   { "group": "", "kind": "Service", "name": "agent-canary", "port": 8080, "weight": 0 }])
        );
        assert_eq!(after["rules"][0], before["rules"][0], "other rules untouched");
        assert_eq!(B.prepare_ops(&after).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn promotion_leaves_only_the_stable_backend_ref_at_100() {
        let during = spec(json!([{ "name": "agent-canary", "port": 8080, "weight": 100 },
                                 { "name": "agent", "port": 8080, "weight": 0 }]));
        let ops = B.final_ops(&during).unwrap();
        let after = apply(&during, &ops);
        assert_eq!(after["rules"][1]["backendRefs"], json!([{ "name": "agent", "port": 8080, "weight": 100 }]));
        assert!(B.only_stable(&after));
        assert!(!B.only_stable(&during));
        assert_eq!(B.final_ops(&after).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn a_rule_with_other_backends_or_without_the_stable_service_is_refused() {
        let shared = spec(json!([{ "name": "agent", "port": 8080 }, { "name": "other", "port": 8080 }]));
        let e = B.prepare_ops(&shared).unwrap_err();
        assert!(e.contains("must send to the Service \"agent\" only"), "{e}");
        let e = B.prepare_ops(&spec(json!([]))).unwrap_err();
        assert!(e.contains("no rule with a backendRef"), "{e}");
        let e = Backends { rule: Some("admin"), ..B }.prepare_ops(&shared).unwrap_err();
        assert!(e.contains("rule #0"), "{e}");
    }
}
