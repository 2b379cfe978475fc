#!/usr/bin/env bash
# Load test (issue 7): ROLLOUTS concurrent rollouts through `exec` routers while wrk reads the API.
#
#   scripts/load-test.sh                       # 500 rollouts, 20 steps at 1 s, wrk 2 threads × 64 conns
#   ROLLOUTS=1000 DURATION=60s scripts/load-test.sh
#
# 1. builds the daemon in release mode (or uses $VANE_BIN) and starts it on 127.0.0.1 with an operator
#    and a viewer token, a fresh store, and one policy: canary 5 → 10 → … → 100 (20 steps), interval 1 s,
#    no metrics — every rollout shifts traffic 20 times through `exec` (`true`), each shift a durable
#    store commit, a process spawn and an event;
# 2. a burst of ROLLOUTS creates, CREATE_CONCURRENCY at a time (scripts/load-create.py), timed;
# 3. at once, wrk with scripts/load.lua for DURATION: GET one rollout (80 %), its events (10 %), the
#    list (10 %) — while every rollout is progressing;
# 4. waits until every rollout is terminal, then prints create and read latency (p50 / p99), read
#    throughput and errors, the daemon's CPU seconds and peak RSS (VmHWM), and how many rollouts succeeded.
# PROFILE=file records a perf profile of the daemon for the whole run.
# Exits non-zero when a request failed or a rollout did not succeed. Needs: curl, wrk, python3.
# The numbers include the load generators' own CPU use: they share the machine with the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

ROLLOUTS=${ROLLOUTS:-500}
DURATION=${DURATION:-30s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
CREATE_CONCURRENCY=${CREATE_CONCURRENCY:-64}
INTERVAL=${INTERVAL:-1s}

for tool in curl wrk python3; do
  command -v "$tool" >/dev/null || { echo "load-test: $tool is missing (apt-get install -y $tool)" >&2; exit 2; }
done

. scripts/lib/daemon.sh
vane_prepare release
steps=$(seq -s, 5 5 100)
cat >"$tmp/policies/load.yaml" <<EOF
name: load
strategy: canary
steps: [$steps]
interval: $INTERVAL
threshold: 3
progressDeadline: 30m
EOF

export LOAD_OP_TOKEN="load-operator-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export LOAD_VIEW_TOKEN="load-viewer-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export VANE_SERVER_TOKENS='[{ name = "ci", token_env = "LOAD_OP_TOKEN", role = "operator" }, { name = "grafana", token_env = "LOAD_VIEW_TOKEN", role = "viewer" }]'
# The router command is the daemon's (a profile); every rollout is active at once, so allow them all.
export VANE_ROUTERS_EXEC='{ noop = { command = ["true"] } }'
export VANE_SERVER_MAX_ACTIVE_ROLLOUTS="$ROLLOUTS"
vane_start

cpu_seconds() { # utime + stime of the daemon, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat"
}
child_cpu_seconds() { # cutime + cstime: the router commands the daemon ran (and reaped)
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($16 + $17) / hz }' "/proc/$pid/stat"
}
cpu_start=$(cpu_seconds)
perf_pid=""
if [ -n "${PROFILE:-}" ]; then # PROFILE=file: a perf profile of the daemon for the whole run
  perf record -q -F 499 -g -p "$pid" -o "$PROFILE" 2>/dev/null &
  perf_pid=$!
fi

echo "creating $ROLLOUTS rollouts ($CREATE_CONCURRENCY concurrent) on $url ..."
VANE_TOKEN="$LOAD_OP_TOKEN" python3 scripts/load-create.py --port "$port" --count "$ROLLOUTS" \
  --concurrency "$CREATE_CONCURRENCY" --latencies "$tmp/creates.txt" >"$tmp/ids"

echo "reading with wrk ($THREADS threads, $CONNECTIONS connections, $DURATION) while the rollouts progress ..."
LOAD_IDS="$tmp/ids" VANE_TOKEN="$LOAD_VIEW_TOKEN" \
  wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --latency -s scripts/load.lua "$url" >"$tmp/wrk.txt"
cpu_wrk=$(cpu_seconds)

echo "waiting for every rollout to finish ..."
deadline=$(( $(date +%s) + 600 ))
while :; do
  active=0
  for phase in Pending Progressing Paused AwaitingApproval Promoting RollingBack; do
    n=$(curl -s -H "Authorization: Bearer $LOAD_VIEW_TOKEN" "$url/api/v1/rollouts?phase=$phase&limit=1000" |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
    active=$((active + n))
  done
  [ "$active" -eq 0 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out with $active rollouts still active" >&2; break; }
  sleep 1
done
cpu_end=$(cpu_seconds)
[ -z "$perf_pid" ] || { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
child_cpu=$(child_cpu_seconds)
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
curl -s -H "Authorization: Bearer $LOAD_VIEW_TOKEN" "$url/api/v1/rollouts?limit=1000" >"$tmp/final.json"
curl -s "$url/metrics" >"$tmp/metrics.txt"

python3 - "$tmp" "$ROLLOUTS" "$cpu_start" "$cpu_wrk" "$cpu_end" "$hwm" "$rss" "$DURATION" "$INTERVAL" "$child_cpu" <<'EOF'
import collections, json, re, sys
tmp, n, cpu0, cpu_wrk, cpu1, hwm, rss, duration, interval, child_cpu = sys.argv[1:]
n = int(n)
codes = collections.Counter()
times = []
for line in open(f"{tmp}/creates.txt"):
    code, ms = line.split()
    codes[code] += 1
    times.append(float(ms))
times.sort()
pct = lambda xs, p: xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")
wrk = open(f"{tmp}/wrk.txt").read()
def grab(pattern):
    m = re.search(pattern, wrk, re.M)
    return m.group(1) if m else "?"
# Results from the daemon's counters (the list shows at most 1000); durations from the newest 1000.
phases = collections.Counter()
for line in open(f"{tmp}/metrics.txt"):
    m = re.match(r'vane_rollouts_total\{strategy="\w+",result="(\w+)"\} (\d+)', line)
    if m and int(m.group(2)):
        phases[m.group(1)] += int(m.group(2))
from datetime import datetime
final = json.load(open(f"{tmp}/final.json"))["items"]
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
first = min(ts(r["createdAt"]) for r in final)
span = max(ts(r["updatedAt"]) for r in final) - first
durations = sorted(ts(r["updatedAt"]) - ts(r["createdAt"]) for r in final)
errors = sum(1 for l in open(f"{tmp}/daemon.log") if " ERROR " in l)
non2xx = int(grab(r"Non-2xx or 3xx responses: (\d+)").replace("?", "0"))
sock = grab(r"Socket errors: (.*)")
total, rps, p50, p99 = grab(r"(\d+) requests in"), grab(r"Requests/sec:\s+([\d.]+)"), grab(r"^\s+50%\s+(\S+)"), grab(r"^\s+99%\s+(\S+)")
print(f"""
== vane load test: {n} rollouts (exec routers, 20 steps at 1 s) + wrk reads ==
creates      {len(times)} sent, status {dict(codes)}; latency p50 {pct(times, 50):.1f} ms, p99 {pct(times, 99):.1f} ms, max {times[-1] if times else 0:.1f} ms
reads (wrk)  {total} in {duration}, {rps} req/s; latency p50 {p50}, p99 {p99}; non-2xx {non2xx}; socket errors {"none" if sock == "?" else sock}
rollouts     {dict(phases)}; each{" of the newest 1000" if n > 1000 else ""} took p50 {pct(durations, 50):.1f} s, max {durations[-1]:.1f} s (20 steps at {interval}); the last finished {span:.1f} s after the first was created
daemon CPU   {float(cpu1) - float(cpu0):.1f} s total ({float(cpu_wrk) - float(cpu0):.1f} s during creates + wrk), plus {float(child_cpu):.1f} s in the router commands it ran; peak RSS (VmHWM) {int(hwm) / 1024:.1f} MiB, RSS at end {int(rss) / 1024:.1f} MiB
daemon log   {errors} ERROR lines
""")
ok = codes.get("201", 0) == n and phases.get("Succeeded", 0) == n and non2xx == 0 and sock == "?"
sys.exit(0 if ok else 1)
EOF
