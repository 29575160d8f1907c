#!/usr/bin/env python3
"""Renders bench/results into the figures table of bench/README.md and latency plots."""

import json
import os
import platform
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")
README = os.path.join(HERE, "README.md")
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"


def load(name):
    path = os.path.join(RES, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} vCPU {cpu}{mem}, Linux {platform.release()}"


def criterion_rows():
    path = os.path.join(RES, "criterion.txt")
    if not os.path.exists(path):
        return []
    rows, name = [], None
    for line in open(path):
        m = re.match(r"^(\S+/\S+)", line)
        if m and "time:" not in line.split(m.group(1), 1)[0]:
            name = m.group(1)
        t = re.search(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
        if t and name:
            rows.append((name, t.group(1)))
            name = None
    return rows


def table():
    out = [f"Measured {time.strftime('%Y-%m-%d')} on {machine()} with `bench/report.sh`.", ""]
    out += ["| benchmark | figure |", "|---|---|"]
    for drv in ("uring", "portable"):
        t = load(f"transit-{drv}.json")
        if not t:
            continue
        runs = {(r["name"], r["frame_len"]): r for r in t["runs"]}
        for fl in (296, 1340):
            r = runs.get(("saturation", fl))
            if r:
                out.append(
                    f"| transit, {drv}, {fl} B frames, saturation | {r['frames_per_s'] / 1e6:.2f} M frames/s, "
                    f"{r['gbit_per_s']:.2f} Gbit/s, router {r['router_cpu_s']:.2f} CPU-s per run; "
                    f"latency p50 {r['p50_us']:.0f} us |"
                )
            d = runs.get(("saturation, direct TCP", fl))
            if d:
                out.append(
                    f"| (generator floor) direct TCP, {fl} B, saturation | {d['frames_per_s'] / 1e6:.2f} M frames/s; "
                    f"latency p50 {d['p50_us']:.0f} us |"
                )
        runs_at = lambda pl, name: next(
            (r for r in t["runs"] if r.get("placement") == pl and r["name"] == name), None
        )
        for a in t.get("added", []):
            if a["path"] != "through router":
                continue
            pl = a["placement"]
            relay = next(
                (x for x in t["added"] if x["placement"] == pl and x["path"] == "through plain relay"),
                None,
            )
            base = runs_at(pl, "paced, direct TCP (baseline)")
            hop = runs_at(pl, "paced, through router")
            row = (
                f"| transit, {drv}, paced {a['offered_per_s']}/s, 296 B, placement {pl} | "
                f"router adds p50 {a['merged_us']['p50']:.1f} us, p99 {a['merged_us']['p99']:.1f} us "
                f"(median of {a['rounds']} rounds: p50 {a['round_median_us']['p50']:.1f}, "
                f"p99 {a['round_median_us']['p99']:.1f})"
            )
            if relay:
                row += (
                    f"; plain relay adds p50 {relay['merged_us']['p50']:.1f} us, "
                    f"p99 {relay['merged_us']['p99']:.1f} us"
                )
            over = next(
                (x for x in t["added"] if x["placement"] == pl and x["path"] == "router over plain relay"),
                None,
            )
            if over:
                row += (
                    f"; router over relay p50 {over['merged_us']['p50']:+.1f} us, "
                    f"p99 {over['merged_us']['p99']:+.1f} us"
                )
            if hop and base:
                row += (
                    f"; through router p50 {hop['p50_us']:.1f} us, p99 {hop['p99_us']:.1f} us, "
                    f"direct p50 {base['p50_us']:.1f} us, p99 {base['p99_us']:.1f} us"
                )
            lost = sum(r.get("lost") or 0 for r in t["runs"] if r.get("placement") == pl)
            if lost:
                row += f"; {lost} frames lost"
            if a.get("steal_ms") is not None:
                row += f"; host took {a['steal_ms']:.0f} ms of vCPU time during the rounds"
            out.append(row + " |")
    m = load("msgbench.json")
    if m:
        for r in m["round_trips"]:
            out.append(
                f"| message round trip, {r['path']}, {r['size']} B | p50 {r['p50_us'] / 1000:.2f} ms, "
                f"p99 {r['p99_us'] / 1000:.2f} ms |"
            )
        out.append(
            f"| messages, local socket, 1 KB, {m['in_flight']} in flight | {m['pairs_per_s']:.0f} request/reply pairs/s |"
        )
    for name, thr in criterion_rows():
        out.append(f"| criterion `{name}` | {thr} |")
    return "\n".join(out)


def plots():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    x = lambda q: 1 / (1 - min(q, 0.99999))
    for drv in ("uring", "portable"):
        t = load(f"transit-{drv}.json")
        if not t:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        paced = [r for r in t["runs"] if r["name"].startswith("paced")]
        for r in paced:
            qs = [c[0] for c in r["curve"]]
            style = "-" if r.get("placement") == "apart" else ":"
            label = f"{r['name'][len('paced, '):]} ({r.get('placement')})"
            ax.plot([x(q) for q in qs], [c[1] for c in r["curve"]], style, marker="o", markersize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([2, 10, 100, 1000, 10000])
        ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
        ax.set_ylabel("one-way latency (us)")
        rate = paced[0]["offered_per_s"] if paced else "?"
        ax.set_title(f"transit, {drv} driver, 296 B frames at {rate}/s")
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"plots/transit-{drv}.png"
        fig.savefig(os.path.join(HERE, name), dpi=100)
        made.append(name)
    m = load("msgbench.json")
    if m:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in m["round_trips"]:
            qs = [c[0] for c in r["curve"]]
            ax.plot([x(q) for q in qs], [c[1] / 1000 for c in r["curve"]], marker="o", label=f"{r['path']}, {r['size']} B")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([2, 10, 100, 1000])
        ax.set_xticklabels(["p50", "p90", "p99", "p99.9"])
        ax.set_ylabel("round trip (ms)")
        ax.set_title("message request/reply over one router hop")
        ax.legend()
        fig.tight_layout()
        name = "plots/msgbench.png"
        fig.savefig(os.path.join(HERE, name), dpi=100)
        made.append(name)
    return made


def main():
    body = table()
    for p in plots():
        body += f"\n\n![{p}]({p})"
    with open(README) as f:
        text = f.read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    text = text[:start] + "\n" + body + "\n" + text[end:]
    with open(README, "w") as f:
        f.write(text)
    print(body)


if __name__ == "__main__":
    main()
