#!/usr/bin/env python3
"""Render charts/vane without helm, for scripts/validate-deploy.sh (helm is neither a Debian nor a PyPI
package). It implements only the small part of Go templates the chart uses, and fails on anything
else, so the chart stays within it:
  {{ .Values.a.b }} {{ .Release.Namespace }} {{ .Release.Name }} {{ .Chart.AppVersion }} {{ $v }}
  {{ "text" }} {{ `raw` }}, pipes to quote, toYaml, indent N, nindent N, default X,
  {{- ... -}} whitespace trimming, {{ if X }} ... {{ else }} ... {{ end }},
  {{ range $k, $v := X }} ... {{ end }} over a mapping (sorted keys, as helm does).
Usage: render-chart.py CHART_DIR [--namespace NS] [--set a.b=value ...] > rendered.yaml
"""
import os, re, shlex, sys, yaml

def fail(msg):
    sys.exit(f"render-chart: {msg}")

def tokenize(src):
    """Text and {{ actions }}; a "..." or `...` string inside an action may contain }}."""
    out, pos = [], 0
    while True:
        start = src.find("{{", pos)
        if start < 0:
            out.append(("text", src[pos:]))
            return out
        text = src[pos:start]
        i, quote = start + 2, None
        while i < len(src):
            ch = src[i]
            if quote:
                if ch == quote: quote = None
            elif ch in "\"`":
                quote = ch
            elif src.startswith("}}", i):
                break
            i += 1
        else:
            fail("unclosed {{")
        inner = src[start + 2:i]
        if inner.startswith("-"): text, inner = text.rstrip(), inner[1:]
        trim_right = inner.endswith("-")
        if trim_right: inner = inner[:-1]
        out.append(("text", text))
        out.append(("action", inner.strip()))
        pos = i + 2
        if trim_right:
            rest = src[pos:]
            pos += len(rest) - len(rest.lstrip())

def parse(tokens, i=0, stop=("end",)):
    nodes = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val)); i += 1; continue
        word = val.split(None, 1)[0] if val else ""
        if word in stop:
            return nodes, i
        if word == "if":
            body, i = parse(tokens, i + 1, ("else", "end"))
            other = []
            if tokens[i][1] == "else":
                other, i = parse(tokens, i + 1, ("end",))
            nodes.append(("if", val[2:].strip(), body, other)); i += 1
        elif word == "range":
            m = re.match(r"range\s+\$(\w+)\s*,\s*\$(\w+)\s*:=\s*(.+)$", val)
            if not m: fail(f"unsupported range: {val}")
            body, i = parse(tokens, i + 1, ("end",))
            nodes.append(("range", m.groups(), body)); i += 1
        elif word in ("else", "end"):
            fail(f"unexpected {word}")
        else:
            nodes.append(("expr", val)); i += 1
    if stop != ("end",) or True:
        return nodes, i

def lookup(path, ctx):
    if path.startswith("$"):
        name, _, rest = path[1:].partition(".")
        v = ctx["vars"][name]
        parts = rest.split(".") if rest else []
    else:
        parts = path[1:].split(".")
        v = ctx["root"]
    for p in parts:
        if not isinstance(v, dict) or p not in v: return None
        v = v[p]
    return v

def term(tok, ctx):
    if tok.startswith('"'): return yaml.safe_load(tok)
    if tok.startswith("`"): return tok[1:-1]
    if tok.startswith(".") or tok.startswith("$"): return lookup(tok, ctx)
    if re.fullmatch(r"-?\d+", tok): return int(tok)
    fail(f"unsupported term {tok!r}")

def to_yaml(v):
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")

def split_pipes(expr):
    """Split at | outside "..." and `...`."""
    parts, cur, quote = [], "", None
    for ch in expr:
        if quote:
            cur += ch
            if ch == quote: quote = None
        elif ch in "\"`":
            quote = ch; cur += ch
        elif ch == "|":
            parts.append(cur.strip()); cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts

def evaluate(expr, ctx):
    stages = split_pipes(expr)
    value = term(stages[0], ctx)
    for st in stages[1:]:
        fn, *args = st.split()
        if fn == "quote": value = '"' + str("" if value is None else value).replace('"', '\\"') + '"'
        elif fn == "toYaml": value = to_yaml(value)
        elif fn in ("indent", "nindent"):
            pad = " " * int(args[0])
            value = ("\n" if fn == "nindent" else "") + "\n".join(pad + l if l else l for l in str(value).split("\n"))
        elif fn == "default": value = value if value not in (None, "", [], {}) else term(args[0], ctx)
        else: fail(f"unsupported function {fn!r}")
    return value

def render(nodes, ctx):
    out = []
    for n in nodes:
        if n[0] == "text": out.append(n[1])
        elif n[0] == "expr":
            v = evaluate(n[1], ctx)
            out.append("" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)))
        elif n[0] == "if":
            out.append(render(n[2] if evaluate(n[1], ctx) not in (None, False, "", [], {}, 0) else n[3], ctx))
        elif n[0] == "range":
            (k, v, src), body = n[1], n[2]
            items = evaluate(src, ctx) or {}
            if not isinstance(items, dict): fail("range over a mapping only")
            for key in sorted(items):
                out.append(render(body, {**ctx, "vars": {**ctx["vars"], k: key, v: items[key]}}))
    return "".join(out)

def main():
    args = sys.argv[1:]
    if not args: fail("usage: render-chart.py CHART_DIR [--namespace NS] [--set a.b=v ...]")
    chart, ns, sets = args[0], "default", []
    i = 1
    while i < len(args):
        if args[i] == "--namespace": ns = args[i + 1]; i += 2
        elif args[i] == "--set": sets.append(args[i + 1]); i += 2
        else: fail(f"unknown argument {args[i]}")
    meta = yaml.safe_load(open(os.path.join(chart, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml"))) or {}
    for s in sets:
        path, _, raw = s.partition("=")
        node = values
        *parents, last = path.split(".")
        for p in parents: node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    root = {"Values": values, "Release": {"Name": "vane", "Namespace": ns, "Service": "Helm"},
            "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")}}
    tdir = os.path.join(chart, "templates")
    docs = []
    for f in sorted(os.listdir(tdir)):
        if not f.endswith(".yaml"): continue
        nodes, _ = parse(tokenize(open(os.path.join(tdir, f)).read()))
        text = render(nodes, {"root": root, "vars": {}})
        for d in yaml.safe_load_all(text):
            if d: docs.append(d)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=True))

main()
