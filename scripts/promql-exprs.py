#!/usr/bin/env python3
"""Print every PromQL expression shipped in dashboards/*.json and deploy/**/prometheusrule*.yaml,
one JSON string per line, with Grafana variables substituted so that a real Prometheus can parse them.

Dashboards: every "expr" (panel targets, annotations) and every PromQL template-variable query
(label_values(SELECTOR, label) -> SELECTOR, query_result(EXPR) -> EXPR; label_values(label),
label_names() and metrics() are not PromQL and are skipped).
Rules: spec.groups[].rules[].expr of every PrometheusRule.

Substitutions: $__rate_interval, $__interval, $__range -> 1m; $namespace, $service, $stable_version,
$canary_version -> the options below; $datasource removed; any other variable (e.g. $metric) -> .*
"""
import argparse
import glob
import json
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)")


def walk_exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from walk_exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_exprs(v)


def variable_promql(var):
    if var.get("type") != "query":
        return None
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query")
    if not isinstance(q, str) or not q.strip():
        return None
    q = q.strip()
    m = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", q, re.S)
    if m:
        return m.group(1).strip()
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1).strip()
    if re.match(r"(label_values|label_names|metrics)\(", q):
        return None
    return q


def dashboard_exprs(path):
    with open(path) as f:
        d = json.load(f)
    yield from walk_exprs(d.get("panels", []))
    yield from walk_exprs(d.get("annotations", {}))
    for var in d.get("templating", {}).get("list", []):
        e = variable_promql(var)
        if e:
            yield e


def rule_exprs(path):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "PrometheusRule":
                continue
            for group in doc.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    yield rule["expr"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--service", default="demo")
    ap.add_argument("--stable", default="v1")
    ap.add_argument("--canary", default="v2")
    ap.add_argument("--root", default=ROOT, help="repository root (default: this script's repo)")
    ap.add_argument("--only", choices=["dashboards", "rules"], help="print only the dashboards' or the rules' expressions")
    a = ap.parse_args()

    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m", "datasource": "",
              "namespace": a.namespace, "service": a.service,
              "stable_version": a.stable, "canary_version": a.canary}

    def subst(expr):
        return VAR.sub(lambda m: values.get(m.group(1) or m.group(2), ".*"), expr)

    sources = []
    if a.only != "rules":
        sources += [(p, dashboard_exprs) for p in sorted(glob.glob(os.path.join(a.root, "dashboards", "*.json")))]
    if a.only != "dashboards":
        sources += [(p, rule_exprs)
                    for p in sorted(glob.glob(os.path.join(a.root, "deploy", "**", "prometheusrule*.yaml"), recursive=True))]
    if not sources:
        sys.exit(f"no dashboards or PrometheusRule files under {a.root}")
    seen = set()
    for path, extract in sources:
        for expr in extract(path):
            e = re.sub(r"\s*\n\s*", " ", subst(expr)).strip()
            if e not in seen:
                seen.add(e)
                print(json.dumps(e))


if __name__ == "__main__":
    main()
