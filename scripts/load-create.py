#!/usr/bin/env python3
"""A burst of rollout creates for scripts/load-test.sh: N POST /api/v1/rollouts, C at a time over
keep-alive connections, each for its own service with the `exec` router profile `noop` (`true`).
Prints each created id to stdout; writes "status latency_ms" lines to --latencies."""
import argparse
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--count", type=int, default=500)
ap.add_argument("--concurrency", type=int, default=64)
ap.add_argument("--policy", default="load")
ap.add_argument("--latencies", required=True)
a = ap.parse_args()

headers = {"Authorization": "Bearer " + os.environ["VANE_TOKEN"], "Content-Type": "application/json"}
local = threading.local()


def create(i):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
    body = json.dumps({"service": f"svc-{i}", "namespace": "load", "version": "v2", "stableVersion": "v1",
                       "policy": a.policy, "router": {"kind": "exec", "profile": "noop"}})
    started = time.perf_counter()
    local.conn.request("POST", "/api/v1/rollouts", body, headers)
    res = local.conn.getresponse()
    data = res.read()
    ms = (time.perf_counter() - started) * 1000
    return res.status, ms, (json.loads(data).get("id") if res.status == 201 else data.decode(errors="replace"))


with ThreadPoolExecutor(a.concurrency) as pool, open(a.latencies, "w") as lat:
    for status, ms, detail in pool.map(create, range(1, a.count + 1)):
        lat.write(f"{status} {ms:.3f}\n")
        if status == 201:
            print(detail)
        else:
            print(f"create failed: {status} {detail}", file=__import__("sys").stderr)
