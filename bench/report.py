#!/usr/bin/env python3
"""Renders bench/results into the figures section of bench/README.md, plus latency plots.

    python3 bench/report.py                      # bench/results -> bench/README.md
    python3 bench/report.py --results DIR --print-only

Every transit figure is printed as the median over rounds with its spread (min..max over the
rounds), with the machine, the exact command and the binaries the JSON recorded. A difference
that transit judged inside the run-to-run noise is printed as "inconclusive" with its spread,
never as a number. Result files that are missing, unreadable or in an older format are named
and skipped.
"""

import argparse
import json
import os
import platform
import re
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"
TRANSIT_SCHEMA = "hyphae-transit/2"
DRIVERS = ("uring", "portable")
# The paced run alone at 5,000 frames/s (transit-light.json), where each frame finds the
# worker asleep: what a wake-up costs the router against the plain relay.
LIGHT_HEAD = "### Transit at light load, 5,000 frames/s, `--driver portable`"


def load(res, name):
    """The parsed JSON file, or (None, why not)."""
    path = os.path.join(res, name)
    if not os.path.exists(path):
        return None, f"`results/{name}` is missing"
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"`results/{name}` is unreadable ({e})"


def written(res, name):
    """The date a result file was last written, for results that do not record it."""
    try:
        return time.strftime("%Y-%m-%d", time.localtime(os.path.getmtime(os.path.join(res, name))))
    except OSError:
        return "unknown date"


def recorded_run(res):
    """The date and machine `report.sh` wrote to `machine.txt` for the results that record
    neither (criterion, msgbench); `None` without that file."""
    try:
        with open(os.path.join(res, "machine.txt")) as f:
            day, desc = (l.strip() for l in f.read().splitlines()[:2])
    except (OSError, ValueError):
        return None
    return (day, desc) if day and desc else None


def machine():
    """This machine, written to `machine.txt` by `report.sh` before it runs the benchmarks."""
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
            mem = f", {kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} vCPU {cpu}{mem}, Linux {platform.release()}"


# ---------------------------------------------------------------------------------------------
# Formatting a spread: {"median", "min", "max", "per_round", ["conclusive"]}
# ---------------------------------------------------------------------------------------------


def num(v, digits):
    return "n/a" if v is None else f"{v:.{digits}f}"


def spread(s, scale=1.0, digits=2, unit=""):
    """`3.61 M/s (3.60..4.75)`: the median over rounds, then the lowest and highest round."""
    if not s or s.get("median") is None:
        return "not measured"
    md, lo, hi = (s[k] / scale for k in ("median", "min", "max"))
    rounds = sum(1 for v in s.get("per_round", []) if v is not None)
    only = " (1 round, no spread)" if rounds == 1 else f" ({lo:.{digits}f}..{hi:.{digits}f})"
    return f"{md:.{digits}f}{unit}{only}"


def added(a):
    """An added latency as transit judged it: a number only when conclusive."""
    if not a or a.get("median") is None:
        return "inconclusive (no round measured)"
    rng = f"{a['min']:.1f}..{a['max']:.1f} us"
    if a.get("conclusive"):
        return f"{a['median']:.1f} us ({rng})"
    n = a.get("rounds", 0)
    few = f"; {n} rounds, fewer than 5" if n < 5 else ""
    return f"inconclusive (spread {rng}{few})"


def ratio(r):
    if not r or r.get("median") is None:
        return "not measured"
    rng = f"{r['min']:.2f}..{r['max']:.2f}"
    if r.get("conclusive"):
        return f"{r['median']:.2f}x ({rng})"
    return f"inconclusive (spread {rng})"


# ---------------------------------------------------------------------------------------------
# Transit
# ---------------------------------------------------------------------------------------------


def transit_section(res, drv, head=None):
    name = f"transit-{drv}.json"
    t, why = load(res, name)
    head = head or f"### Transit, `--driver {drv}`"
    if t is None:
        return [head, "", f"No figures: {why}. `bench/report.sh` produces them.", ""]
    if t.get("schema") != TRANSIT_SCHEMA:
        return [
            head,
            "",
            f"No figures: `results/{name}` predates the current format (single runs, no spread "
            f"over rounds, no stock comparison). `bench/report.sh` regenerates it.",
            "",
        ]
    try:
        return transit_body(t, head, drv)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        return [head, "", f"No figures: `results/{name}` is incomplete ({e!r}).", ""]


def transit_body(t, head, drv):
    m, bins, st = t["machine"], t["binaries"], t["settings"]
    hy = bins["hyphae_router"]
    commit = (hy.get("git_commit") or "unknown commit")[:7]
    if hy.get("git_dirty"):
        commit += " plus uncommitted changes"
    stock = bins.get("stock")
    stock_name = (stock or {}).get("version") or "stock mycelium"
    out = [
        head,
        "",
        f"Measured {t['started_utc']} on {m['line']}; load average {m['loadavg_at_start']} at the "
        f"start. {hy.get('version') or 'hyphae-router'} built from `{commit}`"
        + (
            f"; stock: {stock_name} (`{stock['path']}`)."
            if stock
            else ("; stock is measured at saturation only, and this run has none." if not t.get("saturation") else "; no stock binary was at hand.")
        )
        + " The command:",
        "",
        "```sh",
        t["command"],
        "```",
        "",
    ]
    sat = t.get("saturation")
    if sat:
        out += saturation_table(sat, st, stock is not None, stock_name)
    for p in t.get("paced") or []:
        out += paced_tables(p)
    return out


def saturation_table(sat, st, has_stock, stock_name):
    summ = {(s["subject"], s["frame_len"]): s for s in sat["summary"]}
    ratios = {(r["frame_len"], r["figure"]): r for r in sat.get("ratios_hyphae_over_stock", [])}
    n, secs = len(sat["rounds"]), sat["seconds"]
    out = [
        f"Saturation: two fake TCP peers, one streams data frames through the router to the other "
        f"as fast as it takes them; {n} rounds, each running hyphae{', stock' if has_stock else ''} "
        f"and direct TCP in turn (the first rotates) for {secs:g} s per frame size after "
        f"{st.get('warmup_s', 0):g} s of warm-up, every router a fresh process, nothing pinned. "
        f"Each figure is the median over rounds (lowest..highest round); the ratio is the median of "
        f"the per-round ratios (lowest..highest), inconclusive when that spread reaches 1.",
        "",
    ]
    cols = ["figure", "hyphae"] + ([stock_name, "hyphae / stock"] if has_stock else [])
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def row(label, key, fl, scale, digits, unit, ratio_key=None):
        h = summ.get(("hyphae", fl), {})
        cells = [label, spread(h.get(key), scale, digits, unit)]
        if has_stock:
            s = summ.get(("stock", fl), {})
            cells += [spread(s.get(key), scale, digits, unit), ratio(ratios.get((fl, ratio_key))) if ratio_key else ""]
        out.append("| " + " | ".join(cells) + " |")

    def cpu_per_s(sub, fl):
        """The router's CPU seconds per second of its run (vCPUs busy), per round."""
        per = []
        for r in sat["rounds"]:
            run = next((x for x in r["runs"] if x["subject"] == sub and x["frame_len"] == fl), None)
            ok = run and run.get("router_cpu_s") is not None and run.get("seconds")
            per.append(run["router_cpu_s"] / run["seconds"] if ok else None)
        vals = sorted(v for v in per if v is not None)
        if not vals:
            return None
        n = len(vals)
        md = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
        return {"median": md, "min": vals[0], "max": vals[-1], "per_round": per}

    for fl in (296, 1340):
        row(f"{fl} B frames delivered", "frames_per_s", fl, 1e6, 3, " M/s", "frames_per_s")
        row(f"{fl} B frames per router CPU-second", "frames_per_cpu_s", fl, 1e6, 3, " M", "frames_per_cpu_s")
        row(f"{fl} B throughput", "gbit_per_s", fl, 1, 2, " Gbit/s", "gbit_per_s")
        cells = [f"{fl} B router CPU (vCPUs busy)", spread(cpu_per_s("hyphae", fl), 1, 2)]
        if has_stock:
            cells += [spread(cpu_per_s("stock", fl), 1, 2), ""]
        out.append("| " + " | ".join(cells) + " |")
        row(f"{fl} B latency under saturation, p50", "p50_us", fl, 1, 0, " us")
        row(f"{fl} B latency under saturation, p99", "p99_us", fl, 1, 0, " us")
    d296, d1340 = summ.get(("direct", 296)), summ.get(("direct", 1340))
    if d296 and d1340:
        out += [
            "",
            f"The generator's floor on the machine (same traffic straight over one TCP connection, no "
            f"hop): {spread(d296['frames_per_s'], 1e6, 3, ' M frames/s')} at 296 B, "
            f"{spread(d1340['gbit_per_s'], 1, 2, ' Gbit/s')} at 1340 B.",
        ]
    vs = sat.get("ratios_hyphae_over_hyphae_vs") or []
    if vs:
        by = {(r["frame_len"], r["figure"]): r for r in vs}
        drv, other = st.get("driver", "?"), st.get("vs_driver", "?")
        out += [
            "",
            f"The same hyphae on `--driver {other}` ran in every round as well (fresh process, same "
            f"turn order), so the two drivers are compared round by round: `--driver {drv}` over "
            f"`--driver {other}`, median of the per-round ratios (lowest..highest), inconclusive "
            f"when that spread reaches 1.",
            "",
            "| frame | frames delivered | frames per router CPU-second |",
            "|---|---|---|",
        ]
        for fl in (296, 1340):
            out.append(
                f"| {fl} B | {ratio(by.get((fl, 'frames_per_s')))} | "
                f"{ratio(by.get((fl, 'frames_per_cpu_s')))} |"
            )
    loads = ", ".join(r.get("loadavg", "?") for r in sat["rounds"])
    out += ["", f"Load average at the start of each round: {loads}."]
    steals = [r.get("steal_ms") for r in sat["rounds"]]
    if all(steals):
        per_round = "; ".join(
            ", ".join(f"{x['subject']} {x['ms']:.0f} ms" for x in st) for st in steals
        )
        out += [
            "vCPU time the hypervisor took from the machine (steal) while each subject ran, "
            f"round by round: {per_round}. A round with much of it runs slow for reasons "
            "outside the router."
        ]
    out += [""]
    return out


def paced_tables(p):
    pl = p["placement"]
    cpus = p.get("cpus", {})
    where = ", ".join(
        f"{k} {'any vCPU' if v is None else f'vCPU {v}'}" for k, v in (("generator", cpus.get("generator")), ("sinks", cpus.get("sinks")), ("hop", cpus.get("hop")))
    )
    out = [
        f"Paced latency, placement `{pl}` ({where}): hyphae only, {p['frame_len']} B frames open-loop "
        f"at {p['offered_per_s']}/s, one-way, {p['rounds']} rounds of {p['round_s']:g} s per path "
        f"taking turns; the host took {p['steal_ms']:.0f} ms of vCPU time in these "
        f"{p['elapsed_s']:.0f} s. Median over rounds (lowest..highest round).",
        "",
        "| path | p50 | p99 | p99.9 | frames lost |",
        "|---|---|---|---|---|",
    ]
    for path in p["paths"]:
        out.append(
            f"| {path['path']} | {spread(path['p50_us'], 1, 1, ' us')} | "
            f"{spread(path['p99_us'], 1, 1, ' us')} | {spread(path['p999_us'], 1, 1, ' us')} | "
            f"{path['lost']} |"
        )
    out += [
        "",
        "| added latency | p50 | p99 | p99.9 |",
        "|---|---|---|---|",
    ]
    for a in p["added"]:
        out.append(f"| {a['path']} | {added(a['p50_us'])} | {added(a['p99_us'])} | {added(a['p999_us'])} |")
    return out + [""]


# ---------------------------------------------------------------------------------------------
# The other benchmarks
# ---------------------------------------------------------------------------------------------


def criterion_rows(res):
    path = os.path.join(res, "criterion.txt")
    if not os.path.exists(path):
        return []
    rows, name = [], None
    with open(path) as f:
        for line in f:
            m = re.match(r"^(\S+/\S+)", line)
            if m and "time:" not in line.split(m.group(1), 1)[0]:
                name = m.group(1)
            t = re.search(r"thrpt:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
            if t and name:
                rows.append((name, t.group(1)))
                name = None
    return rows


def other_section(res):
    out = ["### Message round trip and criterion", ""]
    rows, notes = [], []
    m, why = load(res, "msgbench.json")
    if m is None:
        notes.append(f"message round trip: no figures ({why})")
    else:
        try:
            for r in m["round_trips"]:
                rows.append(
                    f"| message round trip, {r['path']}, {r['size']} B | p50 {r['p50_us'] / 1000:.2f} ms, "
                    f"p99 {r['p99_us'] / 1000:.2f} ms |"
                )
            rows.append(
                f"| messages, local socket, 1 KB, {m['in_flight']} in flight | "
                f"{m['pairs_per_s']:.0f} request/reply pairs/s |"
            )
        except (KeyError, TypeError) as e:
            notes.append(f"message round trip: `results/msgbench.json` is incomplete ({e!r})")
    crit = criterion_rows(res)
    if not crit:
        notes.append("criterion: no figures (`results/criterion.txt` is missing or empty)")
    rows += [f"| criterion `{name}` | {thr} |" for name, thr in crit]
    if rows:
        run = recorded_run(res)
        if run:
            when = f"single runs of {run[0]} on {run[1]}"
        else:
            when = (
                f"single runs (files written {written(res, 'msgbench.json')} and "
                f"{written(res, 'criterion.txt')}; `results/machine.txt` is missing: machine unknown)"
            )
        out += [
            f"From `results/msgbench.json` and `results/criterion.txt`, {when}.",
            "",
            "| benchmark | figure |",
            "|---|---|",
        ] + rows
    if notes:
        out += ([""] if rows else []) + [f"- {n}" for n in notes]
    return out


def text_section(res, name, title, start):
    """A benchmark's own summary: its first two lines (command, machine) and everything from
    the first line starting with `start`, as the benchmark printed it."""
    path = os.path.join(res, name)
    out = [f"### {title}", ""]
    try:
        with open(path) as f:
            lines = [l.rstrip() for l in f]
    except OSError as e:
        return out + [f"- no figures (`results/{name}`: {e.strerror})", ""]
    head = [l for l in lines[:3] if l]
    i = next((k for k, l in enumerate(lines) if l.startswith(start)), None)
    if i is None:
        return out + [f"- `results/{name}` has no `{start}` section", ""]
    body = [l for l in lines[i:] if not l.startswith(("wrote ", "logs: "))]
    return out + [f"From `results/{name}` (written {written(res, name)}):", "", "```text"] + head + [""] + body + ["```", ""]


def table(res):
    out = [
        "Rewritten by `bench/report.sh` (through `bench/report.py`) from `bench/results/`; "
        "do not edit by hand.",
        "",
    ]
    for drv in DRIVERS:
        out += transit_section(res, drv)
    out += transit_section(res, "light", LIGHT_HEAD)
    out += text_section(res, "mixbench.txt", "Mixed traffic, TCP and QUIC (`mixbench`)", "summary")
    out += other_section(res)
    return "\n".join(out).rstrip()


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plots(res):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    x = lambda q: 1 / (1 - min(q, 0.99999))
    for drv in DRIVERS:
        t, _ = load(res, f"transit-{drv}.json")
        if not t or t.get("schema") != TRANSIT_SCHEMA or not t.get("paced"):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for p in t["paced"]:
            style = "-" if p["placement"] == "apart" else ":"
            for path in p["paths"]:
                qs = [c[0] for c in path["curve"]]
                ax.plot(
                    [x(q) for q in qs],
                    [c[1] for c in path["curve"]],
                    style,
                    marker="o",
                    markersize=3,
                    label=f"{path['path']} ({p['placement']})",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([2, 10, 100, 1000, 10000])
        ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
        ax.set_ylabel("one-way latency (us), all rounds merged")
        ax.set_title(f"transit, {drv} driver, 296 B frames at {t['paced'][0]['offered_per_s']}/s")
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"plots/transit-{drv}.png"
        fig.savefig(os.path.join(HERE, name), dpi=100)
        made.append(name)
    m, _ = load(res, "msgbench.json")
    if m and m.get("round_trips"):
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results"), help="directory of result files")
    ap.add_argument("--readme", default=os.path.join(HERE, "README.md"), help="file with the figures markers")
    ap.add_argument("--print-only", action="store_true", help="print the figures; write no README or plots")
    ap.add_argument("--describe-machine", action="store_true", help="print today's UTC date and this machine, for results/machine.txt")
    a = ap.parse_args()
    if a.describe_machine:
        print(time.strftime("%Y-%m-%d", time.gmtime()))
        print(machine())
        return
    body = table(a.results)
    if not a.print_only:
        for p in plots(a.results):
            body += f"\n\n![{p}]({p})"
        with open(a.readme) as f:
            text = f.read()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{a.readme}: no {BEGIN} ... {END} markers")
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        text = text[:start] + "\n" + body + "\n" + text[end:]
        with open(a.readme, "w") as f:
            f.write(text)
    print(body)


if __name__ == "__main__":
    main()
