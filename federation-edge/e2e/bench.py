#!/usr/bin/env python3
"""Message delivery latency: two real Synapses federating directly vs through hyphae edges.

Brings up both worlds in one run (from run.py's setup): a direct pair (`direct` mode: names
localhost:8481/8482, no hyphae code) and an edges pair (`edges` mode: hs-a -> edge A -> router A
<-> router B -> edge B -> hs-b). In each, alice (on A) and bob (on B) join one room. Each user
has a /sync long-poll loop of its own (a thread, `since` token, a filter that keeps only the
other user's m.room.message events in that room).

One message = a client `PUT /rooms/{room}/send/m.room.message/{txn}` on the sender's homeserver;
its latency is the time from that call to the response of the receiver's /sync that carries it.
Messages go one at a time (the next after the previous arrived, 50-150 ms apart), alternating
direction (A->B, B->A). A round holds --messages per direction per world; within it the worlds
take turns every --block messages (default 1), the first world alternating from turn to turn,
so that both see the same host noise (4 Synapses share 2 vCPUs, and noise here comes in bursts
of seconds: with whole-world turns of 20 messages, one burst doubled one world's round p50 and
not the other's). Before each round the run waits for other work on the host to stop (20 s
at most, 90 s over the run), and it reports how busy the host was in every round.

Reported per world and direction: p50 and p90 over all messages, and min..max of the per-round
p50s. "Edges over direct at p50" is the median over rounds of (edges p50 / direct p50) within a
round, with a distribution-free confidence interval for that median (order statistics: with
10 rounds the 2nd lowest to 2nd highest ratio, 98 %; with 8, the same, 93 %) and the min..max.
Against the goal (within 10 %, ratio <= 1.10): "met" when the interval lies at or below 1.10,
"not met" when it lies above, otherwise "inconclusive". The same for the difference in ms
(edges - direct), which is "inside the noise" when its interval holds 0. --quick only checks
that every message arrives.

Exit status: 0 when every message arrived, 1 otherwise (or on a failure), 2 on setup errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as e2e  # noqa: E402 - run.py beside this file
from run import REPO, Failure, Proc, SetupError, client, expect, q, wait_until  # noqa: E402

GOAL = 1.10  # edges p50 within 10 % of direct
MSG_TIMEOUT = 30.0  # a message not in the receiver's /sync by then counts as lost
SYNC_TIMEOUT_MS = 30000
GAP = (0.05, 0.15)  # seconds between messages, uniform
WARMUP = 5  # uncounted messages per direction per world before round 1
CI_LEVEL = 0.90  # wanted coverage of the interval for the median ratio
BUSY = 0.2  # vCPU of other tasks above which the host counts as busy
ROUND_QUIET_WAIT = 20.0  # before each round, wait up to this long for a quiet host ...
ROUNDS_QUIET_BUDGET = 90.0  # ... and this long over all rounds (the run stays under 5 min)
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Host: CPU accounting (as bench/src/bin/edgebench.rs does)

TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict:
    """Whole-machine CPU seconds from /proc/stat: tasks (user+nice+system), irq, idle, steal."""
    try:
        f = [int(x) / TICK for x in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        f = []
    g = lambda i: f[i] if i < len(f) else 0.0  # noqa: E731
    return {"tasks": g(0) + g(1) + g(2), "irq": g(5) + g(6), "idle": g(3) + g(4),
            "steal": g(7), "t": time.monotonic()}


def proc_cpu(pid: int) -> float:
    try:
        rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def host_info() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {model}, Linux {os.uname().release}"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def others_busy(window: float = 1.0) -> float:
    """vCPUs used by tasks other than this process over `window` seconds (plus irq)."""
    m0, own0 = machine_cpu(), proc_cpu(os.getpid()) + own_children_cpu()
    time.sleep(window)
    m1, own1 = machine_cpu(), proc_cpu(os.getpid()) + own_children_cpu()
    used = (m1["tasks"] + m1["irq"] - m0["tasks"] - m0["irq"]) - (own1 - own0)
    return max(used, 0.0) / (m1["t"] - m0["t"])


def own_children_cpu() -> float:
    return sum(proc_cpu(p.popen.pid) for p in Proc.registry if p.popen is not None)


def wait_quiet(limit: float, threshold: float) -> tuple[float, float]:
    """Waits up to `limit` s until other work uses under `threshold` vCPU; (busy, waited)."""
    t = time.monotonic()
    while True:
        busy = others_busy(1.0)
        waited = time.monotonic() - t
        if busy < threshold or waited >= limit:
            return busy, waited


# --------------------------------------------------------------------------------------------
# Client API over kept-alive connections (urllib opens one connection per request)


class Conn:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.c: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.c is not None:
            self.c.close()
            self.c = None

    def request(self, method: str, path: str, body=None, timeout: float = 60.0):
        """(status, raw body, monotonic time the response was read). Retried once on a
        broken kept-alive connection (sends are idempotent by txn id, syncs by token)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                    self.c.connect()
                self.c.sock.settimeout(timeout)
                self.c.request(method, path, body=data, headers=headers)
                resp = self.c.getresponse()
                raw = resp.read()
                return resp.status, raw, time.monotonic()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise


class SyncLoop(threading.Thread):
    """Long-polls /sync for one user; records when each tagged message body first appears."""

    def __init__(self, label: str, user: dict, room: str, tag: str):
        super().__init__(daemon=True, name=f"sync-{label}")
        self.label, self.user, self.room, self.tag = label, user, room, tag
        self.conn = Conn(user["hs"].client_port, user["access_token"])
        self.cond = threading.Condition()
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: str | None = None
        self.syncs = 0
        none = {"not_types": ["*"]}
        self.filter = q(json.dumps({
            "presence": none, "account_data": none,
            "room": {"rooms": [room], "state": none, "ephemeral": none, "account_data": none,
                     "timeline": {"types": ["m.room.message"], "limit": 50,
                                  "not_senders": [user["user_id"]]}},
        }, separators=(",", ":")))

    def run(self) -> None:
        since, failures = None, 0
        while not self.stopping.is_set():
            path = f"/_matrix/client/v3/sync?filter={self.filter}"
            path += f"&timeout={SYNC_TIMEOUT_MS}&since={q(since)}" if since else "&timeout=0"
            try:
                status, raw, t = self.conn.request("GET", path,
                                                   timeout=SYNC_TIMEOUT_MS / 1000 + 30)
                if status != 200:
                    raise OSError(f"status {status}: {raw[:200]!r}")
                body = json.loads(raw)
            except (OSError, ValueError, http.client.HTTPException) as e:
                if self.stopping.is_set():
                    return
                failures += 1
                if failures >= 5:
                    self.error = f"/sync for {self.label} failed {failures} times: {e}"
                    with self.cond:
                        self.cond.notify_all()
                    return
                time.sleep(0.5)
                continue
            failures = 0
            self.syncs += 1
            events = (body.get("rooms", {}).get("join", {}).get(self.room, {})
                      .get("timeline", {}).get("events", []))
            new = []
            for ev in events:
                text = ev.get("content", {}).get("body")
                if isinstance(text, str) and text.startswith(self.tag):
                    new.append(text)
            since = body.get("next_batch", since)
            with self.cond:
                for text in new:
                    self.seen.setdefault(text, t)
                self.ready.set()
                if new:
                    self.cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while text not in self.seen:
                if self.error:
                    raise Failure(self.error)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[text]


# --------------------------------------------------------------------------------------------
# One world: a Synapse pair (direct or through edges) with alice, bob and a room


class World:
    def __init__(self, name: str, mode: str, workdir: Path):
        self.name, self.mode = name, mode
        args = argparse.Namespace(mode=mode, names="port", workdir=str(workdir), keep=False)
        self.run = e2e.Run(args)
        # Own run directory (and lock), apart from run.py's runs of the same mode.
        self.run.root = self.run.workdir / f"bench-{mode}-port"
        self.tag = f"bench-{secrets.token_hex(3)}"
        self.txn = 0

    def setup(self) -> None:
        self.run.setup()

    def join(self) -> None:
        """As run.py's scenario: alice creates a room on A, invites bob, bob joins over
        federation; then one /sync loop per user."""
        hs_a, hs_b = self.run.hs
        self.alice = hs_a.register("alice")
        self.bob = hs_b.register("bob")
        room = expect("alice creates a room", client("POST", self.alice, "/createRoom", {
            "preset": "private_chat", "name": f"hyphae bench {self.name}"}))["room_id"]
        expect("alice invites bob (over federation)",
               client("POST", self.alice, f"/rooms/{q(room)}/invite",
                      {"user_id": self.bob["user_id"]}))
        expect("bob joins (over federation)",
               client("POST", self.bob, f"/join/{q(room)}?server_name={q(hs_a.server_name)}",
                      {}))

        def joined():
            status, body = client("GET", self.alice, f"/rooms/{q(room)}/joined_members",
                                  timeout=10)
            return status == 200 and self.bob["user_id"] in body.get("joined", {})
        wait_until(f"{self.name}: hs-a to see bob's join", joined, 60, 0.5,
                   alive=self.run.alive)
        self.room = room
        self.sync = {"A": SyncLoop(f"{self.name} alice", self.alice, room, self.tag),
                     "B": SyncLoop(f"{self.name} bob", self.bob, room, self.tag)}
        self.send = {"A": Conn(hs_a.client_port, self.alice["access_token"]),
                     "B": Conn(hs_b.client_port, self.bob["access_token"])}
        for s in self.sync.values():
            s.start()
        for s in self.sync.values():
            if not s.ready.wait(30):
                raise Failure(f"{s.label}: first /sync did not answer in 30 s")
        log(f"{self.name}: room {room} joined by {self.alice['user_id']} and "
            f"{self.bob['user_id']}; /sync loops running")

    def message(self, direction: str, label: str) -> tuple[float | None, float]:
        """Sends one message in `direction` ("A->B" or "B->A") and waits for it in the other
        side's /sync. (latency s or None if lost, send call s)."""
        src, dst = direction.split("->")
        self.txn += 1
        text = f"{self.tag} {label}"
        path = (f"/_matrix/client/v3/rooms/{q(self.room)}/send/m.room.message/"
                f"{self.tag}-{self.txn}")
        t0 = time.monotonic()
        for attempt in range(3):
            try:
                status, raw, t1 = self.send[src].request("PUT", path,
                                                         {"msgtype": "m.text", "body": text})
            except (OSError, http.client.HTTPException) as e:
                status, raw = None, str(e).encode()
            if status == 200:
                break
            time.sleep(0.5)
        else:
            raise Failure(f"{self.name}: sending {text!r}: {status} {raw[:300]!r}")
        seen = self.sync[dst].wait_for(text, MSG_TIMEOUT)
        return (None if seen is None else seen - t0), t1 - t0

    def pids(self) -> dict[str, list[int]]:
        r = self.run
        return {"synapse": [h.proc.popen.pid for h in r.hs if h.proc and h.proc.popen],
                "hyphae": [p.proc.popen.pid for p in [*r.routers, *r.edges]
                           if p.proc and p.proc.popen]}

    def stop(self) -> None:
        for s in getattr(self, "sync", {}).values():
            s.stopping.set()
        for c in getattr(self, "send", {}).values():
            c.close()


# --------------------------------------------------------------------------------------------
# Statistics


def pct(xs: list[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks."""
    s = sorted(xs)
    if not s:
        return math.nan
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """Distribution-free interval for the median: (x_(k), x_(n+1-k)) with the largest k whose
    coverage 1 - 2 P(Bin(n, 1/2) < k) is at least CI_LEVEL (k = 1, min..max, if none)."""
    s, n = sorted(xs), len(xs)
    cover = lambda k: 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n  # noqa: E731
    k = 1
    while k + 1 <= n // 2 and cover(k + 1) >= CI_LEVEL:
        k += 1
    return s[k - 1], s[n - k], cover(k)


def finite(v):
    """v with NaN (no samples) as null, so that the JSON is strict."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def verdict(lo: float, hi: float) -> str:
    if hi <= GOAL:
        return "met"
    if lo > GOAL:
        return "not met"
    return "inconclusive"


# --------------------------------------------------------------------------------------------
# The run


def measure(worlds: list[World], rounds: int, per_turn: int, directions: list[str],
            block: int, quiet: float) -> dict:
    """Rounds of per_turn messages per direction per world; within a round the worlds take
    turns every `block` messages per direction, the first world alternating from turn to turn.
    Returns samples[world][direction] = per-round lists of latencies (ms), and more."""
    samples = {w.name: {d: [] for d in directions} for w in worlds}
    send_ms = {w.name: {d: [] for d in directions} for w in worlds}
    records = []  # one per message: round, world, direction, index, start (s), latency (ms)
    lost: list[str] = []
    cpu = {w.name: {"synapse": 0.0, "hyphae": 0.0, "messages": 0} for w in worlds}
    round_info = []
    pids = {w.name: w.pids() for w in worlds}
    all_pids = [os.getpid()] + [p for w in worlds for g in pids[w.name].values() for p in g]
    rng = random.Random(0x4879)

    log(f"warm-up: {WARMUP} uncounted messages per direction per world")
    for w in worlds:
        for i in range(WARMUP):
            for d in directions:
                lat, _ = w.message(d, f"warmup {d} {i}")
                if lat is None:
                    raise Failure(f"{w.name}: warm-up message {d} #{i} did not arrive in "
                                  f"{MSG_TIMEOUT:.0f} s")
                time.sleep(rng.uniform(*GAP))

    turns, budget = 0, quiet
    for r in range(rounds):
        waited = 0.0
        if budget > 0:
            busy, waited = wait_quiet(min(budget, ROUND_QUIET_WAIT), BUSY)
            budget -= waited
            if waited >= 1.5:
                log(f"round {r + 1}: waited {waited:.0f} s for the host to be quiet "
                    f"(other work now {busy:.2f} vCPU)")
        for w in worlds:
            for d in directions:
                samples[w.name][d].append([])
                send_ms[w.name][d].append([])
        m0 = machine_cpu()
        own0 = sum(proc_cpu(p) for p in all_pids)
        for first in range(0, per_turn, block):
            order = worlds if turns % 2 == 0 else worlds[::-1]
            turns += 1
            for w in order:
                c0 = {g: sum(proc_cpu(p) for p in ps) for g, ps in pids[w.name].items()}
                for i in range(first, min(first + block, per_turn)):
                    for d in directions:
                        t = time.monotonic() - T0
                        lat, sent = w.message(d, f"r{r} {d} {i:03d}")
                        records.append([r, w.name, d, i, round(t, 4),
                                        None if lat is None else round(lat * 1000, 3)])
                        if lat is None:
                            lost.append(f"{w.name} round {r} {d} #{i}")
                            log(f"LOST: {lost[-1]} (not in the receiver's /sync after "
                                f"{MSG_TIMEOUT:.0f} s)")
                        else:
                            samples[w.name][d][-1].append(lat * 1000)
                        send_ms[w.name][d][-1].append(sent * 1000)
                        cpu[w.name]["messages"] += 1
                        time.sleep(rng.uniform(*GAP))
                for g, ps in pids[w.name].items():
                    cpu[w.name][g] += sum(proc_cpu(p) for p in ps) - c0[g]
        m1 = machine_cpu()
        own = sum(proc_cpu(p) for p in all_pids) - own0
        wall = m1["t"] - m0["t"]
        others = max((m1["tasks"] - m0["tasks"]) - own, 0.0)
        info = {"round": r, "wall_s": wall, "waited_for_quiet_s": waited,
                "others_vcpu": others / wall, "ours_vcpu": own / wall,
                "irq_vcpu": (m1["irq"] - m0["irq"]) / wall, "steal_s": m1["steal"] - m0["steal"]}
        round_info.append(info)
        p50s = "  ".join(
            f"{w.name} {d} {statistics.median(samples[w.name][d][-1]):.1f}"
            for w in worlds for d in directions if samples[w.name][d][-1])
        log(f"round {r + 1}/{rounds} ({wall:.1f} s): p50 ms {p50s}; "
            f"vCPU: other tasks {info['others_vcpu']:.2f}, ours {info['ours_vcpu']:.2f}, "
            f"irq {info['irq_vcpu']:.2f}; steal {info['steal_s']:.2f} s")
    return {"samples": samples, "send_ms": send_ms, "lost": lost, "cpu": cpu,
            "rounds": round_info, "records": records}


def summarize(res: dict, worlds: list[World], directions: list[str]) -> dict:
    samples = res["samples"]
    rows = directions + (["both"] if len(directions) > 1 else [])

    def per_round(world: str, row: str) -> list[list[float]]:
        if row != "both":
            return samples[world][row]
        return [sum((samples[world][d][i] for d in directions), [])
                for i in range(len(samples[world][directions[0]]))]

    out = {"worlds": {}, "edges_over_direct": {}}
    for w in worlds:
        out["worlds"][w.name] = {}
        for row in rows:
            rs = per_round(w.name, row)
            flat = [x for rr in rs for x in rr]
            p50s = [statistics.median(rr) for rr in rs if rr]
            sends = [x for d in (directions if row == "both" else [row])
                     for rr in res["send_ms"][w.name][d] for x in rr]
            out["worlds"][w.name][row] = {
                "n": len(flat), "p50_ms": pct(flat, 50), "p90_ms": pct(flat, 90),
                "min_ms": min(flat, default=math.nan), "max_ms": max(flat, default=math.nan),
                "round_p50_ms": p50s, "send_call_p50_ms": pct(sends, 50)}
    if {"direct", "edges"} <= set(out["worlds"]):
        for row in rows:
            d_rounds, e_rounds = per_round("direct", row), per_round("edges", row)
            pairs = [(statistics.median(e), statistics.median(d))
                     for e, d in zip(e_rounds, d_rounds) if e and d]
            ratios = [e / d for e, d in pairs]
            diffs = [e - d for e, d in pairs]
            if not ratios:
                continue
            lo, hi, cover = median_ci(ratios)
            dlo, dhi, _ = median_ci(diffs)
            out["edges_over_direct"][row] = {
                "ratio_median": statistics.median(ratios), "ratio_ci": [lo, hi],
                "ci_coverage": cover, "ratio_min": min(ratios), "ratio_max": max(ratios),
                "round_ratios": ratios, "verdict": verdict(lo, hi),
                "diff_ms_median": statistics.median(diffs), "diff_ms_ci": [dlo, dhi]}
    return out


def report(summary: dict, res: dict, args, quick: bool) -> None:
    print()
    print(f"{'world':7} {'dir':5} {'n':>4} {'p50 ms':>7} {'p90 ms':>7} {'min..max ms':>13}  "
          f"{'per-round p50 min..max':>22}  {'send call p50':>13}")
    for world, rows in summary["worlds"].items():
        for row, s in rows.items():
            rp = s["round_p50_ms"]
            print(f"{world:7} {row:5} {s['n']:4d} {s['p50_ms']:7.1f} {s['p90_ms']:7.1f} "
                  f"{s['min_ms']:6.1f}..{s['max_ms']:<6.1f}  "
                  f"{min(rp):10.1f}..{max(rp):<10.1f}  {s['send_call_p50_ms']:10.1f} ms")
    eod = summary["edges_over_direct"]
    if eod:
        print()
        n = len(next(iter(eod.values()))["round_ratios"])
        cover = next(iter(eod.values()))["ci_coverage"]
        print(f"edges over direct at p50: median of {n} per-round ratios "
              f"[{cover * 100:.0f} % interval for the median; min..max], goal <= {GOAL:.2f}")
        for row, e in eod.items():
            lo, hi = e["ratio_ci"]
            dlo, dhi = e["diff_ms_ci"]
            v = "delivery check only (--quick)" if quick else e["verdict"]
            if dlo <= 0 <= dhi:
                added = "inconclusive: inside the noise"
            elif dhi < 0:
                added = "edges faster in this run: noise or a path difference, not a gain"
            else:
                added = "edges slower"
            print(f"  {row:5} {e['ratio_median']:.3f} [{lo:.3f}..{hi:.3f}; "
                  f"{e['ratio_min']:.3f}..{e['ratio_max']:.3f}]  {v}")
            print(f"        edges - direct at p50: median {e['diff_ms_median']:+.1f} ms "
                  f"[{dlo:+.1f}..{dhi:+.1f}], {added}")
    print()
    for world, c in res["cpu"].items():
        m = max(c["messages"], 1)
        extra = (f", routers+edges {c['hyphae'] * 1000 / m:.2f} ms" if c["hyphae"] else "")
        print(f"CPU per message, {world}: Synapses {c['synapse'] * 1000 / m:.1f} ms{extra}")
    ri = res["rounds"]
    if ri:
        oth = [r["others_vcpu"] for r in ri]
        print(f"other tasks on the host during the rounds: {min(oth):.2f}..{max(oth):.2f} vCPU "
              f"(median {statistics.median(oth):.2f}); steal "
              f"{sum(r['steal_s'] for r in ri):.2f} s in all")
        busy = [r["round"] + 1 for r in ri if r["others_vcpu"] >= BUSY]
        if busy:
            print(f"WARNING: other work used >= {BUSY} vCPU in round(s) "
                  f"{', '.join(map(str, busy))} of {len(ri)}: the host was busy, rerun for "
                  f"figures")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--messages", type=int, default=20,
                    help="messages per direction in each world's turn of a round (default 20)")
    ap.add_argument("--block", type=int, default=1,
                    help="messages per direction before the other world takes its turn "
                         "(default 1: the worlds alternate message by message, so a burst of "
                         "host noise falls on both; --block 20 gives each world whole turns)")
    ap.add_argument("--one-way", action="store_true", help="only A->B (alice to bob)")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: 2 rounds x 3 messages, checks every message arrives")
    ap.add_argument("--json", metavar="FILE", help="write the samples and summary as JSON")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="before setup, wait up to S seconds for other work on the host to "
                         "drop below 0.2 vCPU; then up to 60 s before the rounds and up to 20 s "
                         "before each round, 90 s in all (default 300; --quick 0: no waiting)")
    ap.add_argument("--workdir", default=str(REPO / "target/e2e"),
                    help="holds the Synapse venv (shared with run.py) and the run directories "
                         "bench-direct-port/ and bench-edges-port/ (default: target/e2e)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories after a pass")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.messages = 2, 3
    if args.rounds < 1 or args.messages < 1 or args.block < 1:
        ap.error("--rounds, --messages and --block must be at least 1")
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 300.0
    directions = ["A->B"] if args.one_way else ["A->B", "B->A"]

    # Release binaries by default (figures); HYPHAE_ROUTER_BIN / HYPHAE_EDGE_BIN as run.py.
    for var, name in (("HYPHAE_ROUTER_BIN", "hyphae-router"), ("HYPHAE_EDGE_BIN", "hyphae-edge")):
        os.environ.setdefault(var, str(REPO / "target/release" / name))
        # The daemons start in their run directories: a relative path must not depend on that.
        os.environ[var] = str(Path(os.environ[var]).resolve())
        if not Path(os.environ[var]).is_file():
            print(f"bench: SETUP ERROR: no {name} at {os.environ[var]} (cargo build --release "
                  f"-p hyphae-router -p hyphae-edge --locked, or set {var})", file=sys.stderr)
            return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    host = {"host": host_info(), "loadavg_at_start": loadavg()}
    if args.wait_quiet > 0:
        busy, waited = wait_quiet(args.wait_quiet, BUSY)
        host.update(others_vcpu_before_setup=busy, waited_s=waited)
        log(f"host {host['host']}; load {host['loadavg_at_start']}; other work {busy:.2f} vCPU "
            f"after waiting {waited:.0f} s" + (" (still busy)" if busy >= BUSY else ""))
    else:
        log(f"host {host['host']}; load {host['loadavg_at_start']}")
    log(f"binaries: {os.environ['HYPHAE_ROUTER_BIN']}, {os.environ['HYPHAE_EDGE_BIN']}")

    workdir = Path(args.workdir).resolve()
    worlds = [World("direct", "direct", workdir), World("edges", "edges", workdir)]
    ok = False
    res = summary = None
    try:
        for w in worlds:
            log(f"setting up {w.name} ({w.run.root})")
            w.setup()
            w.join()
        if args.wait_quiet > 0:
            busy, waited = wait_quiet(min(args.wait_quiet, 60.0), BUSY)
            host.update(others_vcpu_before_rounds=busy, loadavg_before_rounds=loadavg())
            log(f"before the rounds: load {loadavg()}, other work {busy:.2f} vCPU "
                f"(waited {waited:.0f} s)")
        log(f"{args.rounds} rounds, {args.messages} messages per direction "
            f"({', '.join(directions)}) per world per round; worlds take turns every "
            f"{args.block} message(s) per direction")
        res = measure(worlds, args.rounds, args.messages, directions, args.block,
                      min(args.wait_quiet, ROUNDS_QUIET_BUDGET))
        summary = summarize(res, worlds, directions)
        ok = not res["lost"]
        if res["lost"]:
            raise Failure(f"{len(res['lost'])} message(s) did not arrive: "
                          + "; ".join(res["lost"][:10]))
    except SetupError as e:
        print(f"\nbench: SETUP ERROR: {e}", file=sys.stderr)
        for w in worlds:
            w.stop()
        Proc.stop_all()
        return 2
    except Failure as e:
        print(f"\nbench: FAIL: {e}", file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"\nbench: interrupted ({e or 'Ctrl-C'})", file=sys.stderr)
    finally:
        for w in worlds:
            w.stop()
        Proc.stop_all()
    host["loadavg_at_end"] = loadavg()

    if summary is not None:
        report(summary, res, args, args.quick)
    if args.json and res is not None:
        doc = {"config": {"rounds": args.rounds, "messages_per_direction_per_round": args.messages,
                          "block": args.block,
                          "directions": directions, "quick": args.quick, "goal_ratio": GOAL,
                          "gap_s": list(GAP), "warmup": WARMUP,
                          "synapse": e2e.SYNAPSE_VERSION,
                          "router_bin": os.environ["HYPHAE_ROUTER_BIN"],
                          "edge_bin": os.environ["HYPHAE_EDGE_BIN"]},
               "host": host, "summary": summary, "lost": res["lost"], "cpu": res["cpu"],
               "rounds": res["rounds"], "samples_ms": res["samples"],
               "send_call_ms": res["send_ms"],
               "messages": {"fields": ["round", "world", "direction", "index", "start_s",
                                       "latency_ms"], "rows": res["records"]},
               "pass": ok}
        Path(args.json).write_text(json.dumps(finite(doc), indent=1) + "\n")
        print(f"JSON: {args.json}")
    if not ok:
        for w in worlds:
            if hasattr(w.run, "hs"):
                w.run.dump_logs()
        print(f"\nbench: FAIL after {time.monotonic() - T0:.0f} s")
        return 1
    n = sum(len(x) for w in res["samples"].values() for d in w.values() for x in d)
    print(f"\nbench: PASS in {time.monotonic() - T0:.0f} s (all {n} measured messages arrived)")
    for w in worlds:
        if args.keep:
            print(f"  kept: {w.run.root}")
        else:
            shutil.rmtree(w.run.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
