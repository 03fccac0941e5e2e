"""``python -m benchmarks``: every scenario against a real broker and against the floor, N runs.

    .venv/bin/python -m benchmarks [--runs 3] [--quick] [--out benchmarks/results/latest.json]
                                   [--png PATH] [--only seq_send,deliver,...]

Each run starts, for each scenario, a fresh ``parrot-ipc serve`` (SQLite store, durability
normal, rate limits raised: see ``servers.BROKER_CONFIG``) and a fresh floor
(``benchmarks/floor.py``), drives both with the same client code, and stops them. ``redis``
runs redis-server (AOF, everysec) in the same run, right after ``seq_send``. Ratios are taken
within a run; the table shows the median of the runs and the spread (min-max).

``--quick``: one run with small counts (a smoke test: it checks the suite works, not speed).
The PNG needs matplotlib and ``redis`` needs redis-server and redis-py (the ``bench`` extra);
without them the suite says so and goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import federated
from .scenarios import FULL, QUICK, SCENARIOS, Sizes, redis_lpush
from .servers import HERE, RedisServer, make_server

ORDER = ["seq_send", "redis", "pipelined_send", "deliver", "get_token", "idle", "deep_mailbox", "scaling",
         "federated"]


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_once(sz: Sizes, only: set[str], log: Any) -> dict[str, Any]:
    """One run of every selected scenario: ``{scenario: {"parrot": {...}, "floor": {...}, ...}}``."""
    res: dict[str, Any] = {}
    for name in ORDER:
        if name not in only:
            continue
        if name == "redis":
            why = RedisServer.available()
            if why is not None:
                res["redis"] = {"skipped": why}
                log(f"  redis: skipped ({why})")
                continue
            with RedisServer() as r:
                red = redis_lpush(r, sz)
            res["redis"] = {"redis_lpush": red}
            if "seq_send" in res:
                res["redis"]["seq_send_over_redis"] = _ratio(res["seq_send"]["parrot"]["rt_per_s"], red["rt_per_s"])
            log(f"  redis: {red['rt_per_s']:.0f} rt/s")
            continue
        if name == "federated":
            res["federated"] = _federated(sz, res, log)
            continue
        fn = SCENARIOS[name]
        entry: dict[str, Any] = {}
        for kind in ("parrot", "floor"):
            t0 = time.monotonic()
            with make_server(kind) as srv:
                entry[kind] = fn(srv, sz)
            log(f"  {name} [{kind}] {time.monotonic() - t0:.1f} s: "
                + ", ".join(f"{k}={v:.4g}" for k, v in entry[kind].items()))
        par, flo = entry["parrot"], entry["floor"]
        entry["ratio_to_floor"] = {k: _ratio(par[k], flo[k]) for k in par}
        res[name] = entry
    return res


def _federated(sz: Sizes, res: dict[str, Any], log: Any) -> dict[str, Any]:
    """The ``federated`` scenario (h1 -> h2 through nats-server), with its ratio to the
    same-host ``deliver`` msgs/s of this run when that ran too."""
    why = federated.available()
    if why is not None:
        log(f"  federated: skipped ({why})")
        return {"skipped": why}
    fed = federated.federated(sz.deliver_per_sender, sz.deliver_window)
    log("  federated: " + ", ".join(f"{k}={v:.4g}" for k, v in fed.items()))
    out: dict[str, Any] = {"h1_to_h2": fed}
    if "deliver" in res:
        out["msgs_per_s_over_deliver"] = _ratio(fed["msgs_per_s"], res["deliver"]["parrot"]["msgs_per_s"])
    return out


def aggregate(runs: list[Any]) -> Any:
    """Same shape as one run; each number becomes ``{median, min, max, runs}``."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: aggregate([r[k] for r in runs if k in r]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        vals = [float(v) for v in runs]
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}
    return first


def _get(agg: dict[str, Any], *path: str) -> float | None:
    node: Any = agg
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node["median"]) if isinstance(node, dict) and "median" in node else None


def targets(agg: dict[str, Any], sz: Sizes) -> list[dict[str, Any]]:
    """Each target of issue 7, judged on the medians."""
    big = sz.idle_stages[-1]
    rows = [
        ("seq_send >= 0.6 x floor", ("seq_send", "ratio_to_floor", "rt_per_s"), ">=", 0.6),
        ("seq_send >= 1.0 x redis-py LPUSH (AOF everysec)", ("redis", "seq_send_over_redis"), ">=", 1.0),
        ("pipelined_send >= 100,000 msgs/s", ("pipelined_send", "parrot", "msgs_per_s"), ">=", 100_000),
        ("deliver >= 20,000 msgs/s", ("deliver", "parrot", "msgs_per_s"), ">=", 20_000),
        ("get_token p50 <= 300 us", ("get_token", "parrot", "p50_us"), "<=", 300),
        (f"idle <= 16 KiB per connection at {big:,}", ("idle", "parrot", f"rss_per_conn_bytes_{big}"), "<=", 16384),
        (f"idle ping p99 <= 10 ms at {big:,}", ("idle", "parrot", f"ping_p99_ms_{big}"), "<=", 10),
        ("deep_mailbox p50 at deep <= 2 x at 100", ("deep_mailbox", "parrot", "deep_over_shallow"), "<=", 2.0),
    ]
    out = []
    for label, path, op, bound in rows:
        v = _get(agg, *path)
        met = None if v is None else (v >= bound if op == ">=" else v <= bound)
        out.append({"target": label, "metric": ".".join(path), "bound": bound, "op": op, "measured": v,
                    "met": met})
    return out


def _fmt(node: Any) -> str:
    if not isinstance(node, dict) or "median" not in node:
        return "-"
    m, lo, hi = node["median"], node["min"], node["max"]
    if abs(m) >= 100:
        return f"{m:,.0f} [{lo:,.0f}-{hi:,.0f}]"
    return f"{m:.3g} [{lo:.3g}-{hi:.3g}]"


def _rows(agg: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any]]:
    """``(scenario, metric, parrot-ipc, floor, ratio)`` in table order; ``""`` is a cell left
    blank (redis has no floor), and a skipped redis run is one row whose metric says why."""
    rows: list[tuple[str, str, Any, Any, Any]] = []
    for name in ORDER:
        entry = agg.get(name)
        if entry is None:
            continue
        if name == "federated":
            rows += _federated_rows(entry)
            continue
        if name == "redis":
            if "skipped" in entry:
                rows.append(("redis", f"skipped: {entry['skipped']}", "", "", ""))
                continue
            for k, v in entry["redis_lpush"].items():
                rows.append(("redis", f"redis-py LPUSH {k}", v, "", ""))
            if "seq_send_over_redis" in entry:
                rows.append(("redis", "seq_send rt/s / LPUSH rt/s", "", "", entry["seq_send_over_redis"]))
            continue
        for k in entry["parrot"]:
            rows.append((name, k, entry["parrot"][k], entry["floor"].get(k), entry["ratio_to_floor"].get(k)))
    return rows


def _federated_rows(entry: dict[str, Any]) -> list[tuple[str, str, Any, Any, Any]]:
    """The federated rows: h1 -> h2 figures (no floor), and msgs/s over same-host deliver."""
    if "skipped" in entry:
        return [("federated", f"skipped: {entry['skipped']}", "", "", "")]
    rows: list[tuple[str, str, Any, Any, Any]] = [
        ("federated", f"h1->h2 {k}", v, "", "") for k, v in entry["h1_to_h2"].items()]
    if "msgs_per_s_over_deliver" in entry:
        rows.append(("federated", "msgs/s / same-host deliver", "", "", entry["msgs_per_s_over_deliver"]))
    return rows


def table(agg: dict[str, Any]) -> str:
    lines = [f"{'scenario':<15} {'metric':<26} {'parrot-ipc':>30} {'floor':>30} {'ratio':>22}"]
    for name, metric, ours, floor, ratio in _rows(agg):
        cells = [x if x == "" else _fmt(x) for x in (ours, floor, ratio)]
        lines.append(f"{name:<15} {metric:<26} {cells[0]:>30} {cells[1]:>30} {cells[2]:>22}".rstrip())
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _md(node: Any) -> str:
    return _fmt(node).replace("[", "(").replace("]", ")")


def markdown(doc: dict[str, Any]) -> str:
    """The results as Markdown (for docs/benchmarks.md): the table, then the targets."""
    out = ["| scenario | metric | parrot-ipc | floor | parrot-ipc / floor |", "|---|---|---:|---:|---:|"]
    for name, metric, ours, floor, ratio in _rows(doc["scenarios"]):
        cells = [x if x == "" else _md(x) for x in (ours, floor, ratio)]
        out.append("|" + "|".join(f" {c} " if c else " " for c in (name, metric, *cells)) + "|")
    out += ["", "| target | measured (median) | met |", "|---|---:|---|"]
    for t in doc["targets"]:
        v = "-" if t["measured"] is None else _num(t["measured"])
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        out.append(f"| {t['target']} | {v} | {met} |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version}


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)


def draw(agg: dict[str, Any], path: Path, sz: Sizes) -> str | None:
    """The scaling curve and the deep-mailbox p50s; None if drawn, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sc = agg.get("scaling")
    if sc is not None:
        for kind, style in (("parrot", "o-"), ("floor", "s--")):
            xs = [int(k) for k in sc[kind]]
            med = [sc[kind][k]["median"] for k in sc[kind]]
            lo = [sc[kind][k]["median"] - sc[kind][k]["min"] for k in sc[kind]]
            hi = [sc[kind][k]["max"] - sc[kind][k]["median"] for k in sc[kind]]
            ax1.errorbar(xs, med, yerr=[lo, hi], fmt=style, capsize=3,
                         label="parrot-ipc (SQLite)" if kind == "parrot" else "floor")
        ax1.set_xscale("log", base=2)
        ax1.set_xticks([int(k) for k in sc["parrot"]], labels=list(sc["parrot"]))
        _label(ax1, "sender/receiver pairs", "delivered msgs/s", "scaling: delivered msgs/s")
    dm = agg.get("deep_mailbox")
    if dm is not None:
        depths = list(sz.deep_depths)
        for kind, style in (("parrot", "o-"), ("floor", "s--")):
            ys = [dm[kind][f"p50_us_{d}"]["median"] for d in depths]
            ax2.plot(depths, ys, style, label="parrot-ipc (SQLite)" if kind == "parrot" else "floor")
        ax2.set_xscale("log")
        _label(ax2, "messages queued", "receive(max=10) p50, us", "deep mailbox: receive p50")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs; the table shows medians (default 3)")
    ap.add_argument("--quick", action="store_true", help="one small run: a smoke test, not figures")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="the JSON results")
    ap.add_argument("--png", default=None, help="the plot (default: --out with .png)")
    ap.add_argument("--only", default=None, help="comma-separated scenarios (default: all)")
    ap.add_argument("--markdown", metavar="JSON", default=None,
                    help="print an earlier results file as Markdown tables, and run nothing")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    sz = QUICK if args.quick else FULL
    runs = 1 if args.quick else args.runs
    only = set(ORDER) if args.only is None else set(args.only.split(","))
    unknown = only - set(ORDER)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    per_run = []
    t0 = time.monotonic()
    for i in range(runs):
        log(f"run {i + 1}/{runs}")
        per_run.append(run_once(sz, only, log))
    agg = aggregate(per_run)
    tg = targets(agg, sz)
    out = Path(args.out)
    png = Path(args.png) if args.png else out.with_suffix(".png")
    why_no_png = draw(agg, png, sz)
    doc = {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
           "quick": args.quick, "runs": runs, "sizes": sz.__dict__, "machine": machine(),
           "seconds": round(time.monotonic() - t0, 1), "png": None if why_no_png else str(png),
           "scenarios": agg, "targets": tg, "per_run": per_run}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=list) + "\n")
    m = doc["machine"]
    print(f"# {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}, SQLite {m['sqlite']}; "
          f"{runs} run(s){' (quick)' if args.quick else ''}; median [min-max]")
    print(table(agg))
    print()
    for t in tg:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        v = "-" if t["measured"] is None else _num(t["measured"])
        print(f"{verdict:<7} {t['target']:<50} measured {v}")
    if why_no_png:
        print(f"no PNG: {why_no_png}")
    else:
        print(f"wrote {out} and {png}")
    return 0
