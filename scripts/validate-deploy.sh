#!/usr/bin/env bash
# Offline checks of deploy/ and dashboards/ (no cluster needed):
#  1. every overlay renders with `kubectl kustomize`;
#  2. every rendered object validates (strict) against the Kubernetes OpenAPI schemas with
#     kubernetes-validate; the Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have no
#     schema there and are checked structurally by the embedded python; any other unknown kind fails;
#  3. no RBAC rule contains "*", no Secret is rendered, the StatefulSet (sled, one replica) or the ha
#     overlay's Deployment (etcd, three replicas) keeps its security settings; the base renders no
#     Prometheus Operator kind, ships exactly policies/ and matches docs' RBAC table; charts/vane
#     renders the same objects as the base (and the components' when enabled);
#  4. dashboards parse and declare the required template variables;
#  5. with promtool on PATH: the alert rules load, their unit tests pass and every dashboard and
#     rule expression parses as PromQL (skipped with a note otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.32.0}
OVERLAYS=(development staging production ha)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "validate-deploy: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

command -v kubectl >/dev/null || fail "kubectl not found on PATH"
if command -v kubernetes-validate >/dev/null; then
  KV=(kubernetes-validate)
else
  step "installing kubernetes-validate"
  python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 || fail "pip install kubernetes-validate failed"
  KV=(python3 -m kubernetes_validate)
fi

validate_k8s() { # file label
  local out
  out=$("${KV[@]}" --strict -k "$K8S_VERSION" --quiet "$1" 2>&1) || { echo "$out" >&2; fail "$2: schema validation failed"; }
  # kubernetes-validate only warns about kinds it has no schema for: allow just the CRDs checked below.
  out=$(grep '^WARN' <<<"$out" | grep -Ev 'kind (ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1 ' || true)
  [ -z "$out" ] || { echo "$out" >&2; fail "$2: kind without a schema"; }
}

for o in "${OVERLAYS[@]}"; do
  step "overlay $o: kustomize, schema (k8s $K8S_VERSION, strict), RBAC and policy checks"
  kubectl kustomize "deploy/overlays/$o" >"$tmp/$o.yaml" 2>"$tmp/err" || { cat "$tmp/err" >&2; fail "kubectl kustomize deploy/overlays/$o failed"; }
  validate_k8s "$tmp/$o.yaml" "overlays/$o"
  python3 - "$tmp/$o.yaml" "$o" <<'PY' || fail "overlays/$o: checks above failed"
import re, sys, yaml
path, overlay = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []
def err(msg): errors.append(f"{overlay}: {msg}")
def kinds(k): return [d for d in docs if d["kind"] == k]
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

for d in docs:
    name = f'{d["kind"]}/{d["metadata"]["name"]}'
    if d["kind"] in ("Role", "ClusterRole"):
        for i, rule in enumerate(d.get("rules", [])):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                if any("*" in v for v in rule.get(field, [])):
                    err(f"{name} rule {i}: wildcard in {field}: {rule[field]}")
    elif d["kind"] == "Secret":
        err(f"{name}: secrets must not be rendered (create vane-secrets out of band)")
    elif d["kind"] == "ServiceMonitor":
        s = d.get("spec", {})
        if d["apiVersion"] != "monitoring.coreos.com/v1": err(f"{name}: apiVersion {d['apiVersion']}")
        if not isinstance(s.get("selector", {}).get("matchLabels"), dict): err(f"{name}: spec.selector.matchLabels missing")
        eps = s.get("endpoints")
        if not isinstance(eps, list) or not eps: err(f"{name}: spec.endpoints must be a non-empty list")
        for ep in eps or []:
            extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}
            if extra: err(f"{name}: unexpected endpoint fields {sorted(extra)}")
            if not isinstance(ep.get("port"), str) or not str(ep.get("path", "")).startswith("/"):
                err(f"{name}: endpoint needs a named port and an absolute path")
            for k in ("interval", "scrapeTimeout"):
                if k in ep and not DURATION.match(ep[k]): err(f"{name}: bad {k} {ep[k]!r}")
    elif d["kind"] == "PrometheusRule":
        groups = d.get("spec", {}).get("groups")
        if d["apiVersion"] != "monitoring.coreos.com/v1": err(f"{name}: apiVersion {d['apiVersion']}")
        if not isinstance(groups, list) or not groups: err(f"{name}: spec.groups must be a non-empty list")
        names = [g.get("name") for g in groups or []]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names): err(f"{name}: group names must be unique strings")
        for g in groups or []:
            if set(g) - {"name", "interval", "rules"} or not g.get("rules"): err(f"{name}: group {g.get('name')}: bad keys or no rules")
            for r in g.get("rules", []):
                rid = r.get("alert") or r.get("record")
                if ("alert" in r) == ("record" in r): err(f"{name}: rule needs exactly one of alert/record: {r}")
                if set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}: err(f"{name}: {rid}: unexpected keys")
                if not isinstance(r.get("expr"), str) or not r["expr"].strip(): err(f"{name}: {rid}: expr must be a non-empty string")
                if "for" in r and not DURATION.match(str(r["for"])): err(f"{name}: {rid}: bad for {r['for']!r}")
                for k in ("labels", "annotations"):
                    if not all(isinstance(v, str) for v in r.get(k, {}).values()): err(f"{name}: {rid}: {k} values must be strings")

rules = kinds("PrometheusRule")
if (overlay in ("production", "ha")) != bool(rules): err(f"PrometheusRule must be rendered by the production and ha overlays only (found {len(rules)})")
if overlay == "ha" and (kinds("StatefulSet") or len(kinds("Deployment")) != 1): err("ha runs one Deployment and no StatefulSet (etcd store)")
for s in kinds("StatefulSet") + kinds("Deployment"):
    spec = s["spec"]
    if s["kind"] == "StatefulSet" and spec.get("replicas") != 1: err("StatefulSet must run exactly one replica (sled)")
    if s["kind"] == "Deployment" and (overlay != "ha" or spec.get("replicas", 1) < 3): err("only the ha overlay runs a Deployment, with at least 3 replicas")
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext", {})
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        want = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
        for k, v in want.items():
            if sc.get(k, psc.get(k)) != v: err(f"container {c['name']}: securityContext.{k} must be {v}")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]: err(f"container {c['name']}: capabilities must drop ALL")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") != "RuntimeDefault": err(f"container {c['name']}: seccompProfile must be RuntimeDefault")
        for probe, p in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            if c.get(probe, {}).get("httpGet", {}).get("path") != p: err(f"container {c['name']}: {probe} must GET {p}")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"): err(f"container {c['name']}: resources need requests and limits")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] != "vane-secrets": err(f"env {e['name']}: secretKeyRef must point at vane-secrets")
for e in errors: print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
done

step "base: applies without the Prometheus Operator; policies = policies/; docs' RBAC table = the Roles"
kubectl kustomize deploy/base >"$tmp/base.yaml" 2>"$tmp/err" || { cat "$tmp/err" >&2; fail "kubectl kustomize deploy/base failed"; }
validate_k8s "$tmp/base.yaml" base
! grep -q '^apiVersion: monitoring.coreos.com/' "$tmp/base.yaml" || fail "base renders Prometheus Operator kinds: keep them in deploy/components"
diff -r policies deploy/base/policies >"$tmp/err" 2>&1 || { cat "$tmp/err" >&2; fail "deploy/base/policies differs from policies/ (copy them: cp policies/*.yaml deploy/base/policies/)"; }
python3 - "$tmp/base.yaml" <<'PY' || fail "checks above failed"
import glob, os, re, sys, yaml
errors = []
kust = yaml.safe_load(open("deploy/base/kustomization.yaml"))
listed = sorted(f for g in kust.get("configMapGenerator", []) if g["name"] == "vane-policies" for f in g.get("files", []))
shipped = sorted("policies/" + os.path.basename(f) for f in glob.glob("policies/*.yaml"))
if listed != shipped: errors.append(f"vane-policies ConfigMap lists {listed}, policies/ has {shipped}")
# The RBAC table of docs/deploy.md against the rendered Roles and ClusterRoles.
rendered = {}
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] in ("Role", "ClusterRole"):
        for r in d.get("rules", []):
            for g in r.get("apiGroups", []):
                for res in r.get("resources", []):
                    rendered.setdefault((g, res), set()).update(r.get("verbs", []))
documented, in_table = {}, False
for line in open("docs/deploy.md"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.strip().startswith("| API group |"): in_table = True; continue
    if not in_table: continue
    if not line.strip().startswith("|"): break
    if set(line.strip()) <= set("|- "): continue
    for g in cells[0].split(","):
        g = g.strip().strip('"')
        documented.setdefault((g, cells[1]), set()).update(v.strip() for v in cells[2].split(","))
if documented != rendered:
    for k in sorted(set(documented) | set(rendered)):
        if documented.get(k) != rendered.get(k):
            errors.append(f"RBAC {k}: docs/deploy.md says {sorted(documented.get(k, []))}, the manifests grant {sorted(rendered.get(k, []))}")
for e in errors: print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

step "charts/vane: renders the base's objects (and the components' when enabled); schema"
# helm is neither a Debian nor a PyPI package: scripts/render-chart.py renders the subset of Go
# templates the chart uses and fails on anything else.
python3 scripts/render-chart.py charts/vane --namespace vane >"$tmp/chart.yaml" || fail "charts/vane does not render"
python3 scripts/render-chart.py charts/vane --namespace vane --set serviceMonitor.enabled=true \
  --set prometheusRule.enabled=true >"$tmp/chart-all.yaml" || fail "charts/vane (all enabled) does not render"
validate_k8s "$tmp/chart-all.yaml" charts/vane
python3 - "$tmp/base.yaml" "$tmp/chart.yaml" "$tmp/chart-all.yaml" <<'PY' || fail "charts/vane and deploy/ differ (above)"
import json, re, sys, tomllib, yaml
def load(path): return [d for d in yaml.safe_load_all(open(path)) if d]
def normal(d):
    d = json.loads(json.dumps(d))
    if d["kind"] == "ConfigMap":
        d["metadata"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])
        d["data"] = {k: tomllib.loads(v) if k.endswith(".toml") else yaml.safe_load(v) for k, v in d["data"].items()}
    for v in d.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
        if "configMap" in v: v["configMap"]["name"] = re.sub(r"-[a-z0-9]{10}$", "", v["configMap"]["name"])
    return (d["kind"], d["metadata"]["name"]), d
base = dict(normal(d) for d in load(sys.argv[1]) if d["kind"] != "Namespace")
chart = dict(normal(d) for d in load(sys.argv[2]))
components = dict(normal(d) for f in ("deploy/components/monitoring/servicemonitor.yaml", "deploy/components/alerts/prometheusrule.yaml") for d in load(f))
chart_all = dict(normal(d) for d in load(sys.argv[3]))
errors = []
def compare(want, got, what):
    for k in sorted(set(want) | set(got)):
        if k not in got: errors.append(f"{what}: the chart lacks {k}")
        elif k not in want: errors.append(f"{what}: the chart has {k} which deploy/ has not")
        elif want[k] != got[k]:
            errors.append(f"{what}: {k} differs:\n    deploy/: {json.dumps(want[k], sort_keys=True)[:600]}\n    chart:   {json.dumps(got[k], sort_keys=True)[:600]}")
compare(base, chart, "default values vs deploy/base")
compare({**base, **components}, chart_all, "serviceMonitor+prometheusRule enabled vs base+components")
for e in errors: print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

step "deploy/secret.example.yaml: schema"
validate_k8s deploy/secret.example.yaml secret.example.yaml

step "dashboards: JSON, variables, datasource, rate intervals"
for f in dashboards/*.json; do
  python3 -m json.tool "$f" >/dev/null || fail "$f is not valid JSON"
done
python3 - <<'PY' || fail "dashboard checks above failed"
import glob, json, os, re, sys
REQUIRED = {"vane-rollouts.json": ["datasource", "namespace", "service"],
            "service-canary.json": ["datasource", "namespace", "service", "stable_version", "canary_version"]}
errors = []
files = sorted(glob.glob("dashboards/*.json"))
for name in REQUIRED:
    if f"dashboards/{name}" not in files: errors.append(f"dashboards/{name} is missing")
def walk(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key: yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node: yield from walk(v, key)
for f in files:
    d = json.load(open(f))
    base = os.path.basename(f)
    want = REQUIRED.get(base, ["datasource", "namespace", "service"] + (["stable_version", "canary_version"] if base.startswith("service-canary") else []))
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for v in want:
        if v not in variables: errors.append(f"{f}: template variable ${v} missing")
    ds = variables.get("datasource", {})
    if ds and (ds.get("type") != "datasource" or ds.get("query") != "prometheus"): errors.append(f"{f}: $datasource must be a Prometheus datasource variable")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 39: errors.append(f"{f}: schemaVersion must be >= 39")
    if not d.get("uid"): errors.append(f"{f}: uid missing")
    ids = [p.get("id") for p in d.get("panels", [])]
    if len(ids) != len(set(ids)): errors.append(f"{f}: duplicate panel ids")
    for p in d.get("panels", []):
        if p.get("type") == "row": continue
        if not p.get("targets"): errors.append(f"{f}: panel {p.get('title')!r} has no targets")
        for src in [p] + p.get("targets", []):
            if src.get("datasource", {}).get("uid") != "${datasource}": errors.append(f"{f}: panel {p.get('title')!r} does not use ${{datasource}}")
    for expr in walk(d, "expr"):
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            if rng not in ("$__rate_interval", "$__range"): errors.append(f"{f}: range [{rng}] should be [$__rate_interval] (or [$__range]): {expr}")
for e in errors: print("  " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

if command -v promtool >/dev/null; then
  step "alert rules: promtool check rules + unit tests"
  mkdir -p "$tmp/rules"
  python3 - "$tmp/rules" deploy/components/alerts/prometheusrule.yaml <<'PY'
import sys, yaml
out, src = sys.argv[1], sys.argv[2]
groups = yaml.safe_load(open(src))["spec"]["groups"]
yaml.safe_dump({"groups": groups}, open(f"{out}/full.yaml", "w"))
for g in groups:
    for r in g["rules"]:
        r.pop("annotations", None)
yaml.safe_dump({"groups": groups}, open(f"{out}/rules.yaml", "w"))
PY
  promtool check rules "$tmp/rules/full.yaml" >/dev/null || fail "promtool check rules: deploy/components/alerts/prometheusrule.yaml"
  cp deploy/components/alerts/alerts.test.yaml "$tmp/rules/"
  promtool test rules "$tmp/rules/alerts.test.yaml" >"$tmp/err" 2>&1 || { cat "$tmp/err" >&2; fail "alert rule unit tests"; }

  step "PromQL: every dashboard and rule expression parses (promtool)"
  python3 scripts/promql-exprs.py >"$tmp/exprs" || fail "scripts/promql-exprs.py failed"
  python3 - "$tmp/exprs" "$tmp/exprs.yaml" <<'PY'
import json, sys, yaml
exprs = [json.loads(l) for l in open(sys.argv[1])]
rules = [{"record": f"vane:check_expr:{i}", "expr": e} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}, open(sys.argv[2], "w"))
PY
  promtool check rules "$tmp/exprs.yaml" >"$tmp/err" 2>&1 || { cat "$tmp/err" >&2; fail "an expression does not parse (see above; indices follow scripts/promql-exprs.py output)"; }
  echo "   $(wc -l <"$tmp/exprs") expressions parse"
else
  echo "== SKIP promtool checks: promtool not on PATH (Debian package prometheus)"
fi

echo "validate-deploy: OK (${OVERLAYS[*]})"
