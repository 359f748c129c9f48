#!/usr/bin/env python3
"""scripts/soak.sh's helper.

  soak_report.py --slice FILE.json SLICE START_S   one slices.csv line from a `raftmq bench e2e` JSON result
  soak_report.py DIR                               Markdown report (stdout) and DIR/soak.svg (disk and RSS)
"""
import csv
import json
import sys
from collections import defaultdict


def slice_line(path, n, start):
    try:
        j = json.load(open(path))
    except (OSError, ValueError):
        print(f"{n},{start},0,0,0,0,0")
        return
    secs = j.get("elapsed_s") or 1
    sent, recv = j.get("acked", 0), j.get("received", 0)
    print(f"{n},{start},{sent},{recv},{sent / secs:.1f},{recv / secs:.1f},{j.get('latency', {}).get('p99_us', 0)}")


def report(d):
    samples = list(csv.DictReader(open(f"{d}/samples.csv")))
    slices = list(csv.DictReader(open(f"{d}/slices.csv")))
    by_node = defaultdict(list)
    for r in samples:
        by_node[r["node"]].append((int(r["t_s"]), int(r["store_bytes"]), int(r["rss_kb"])))
    nodes = sorted(by_node)
    times = sorted({t for pts in by_node.values() for t, _, _ in pts})
    step = max(1, len(times) // 12)
    shown = times[::step] + ([times[-1]] if times and times[-1] not in times[::step] else [])
    print("| minute | " + " | ".join(f"{n} store MiB | {n} RSS MiB" for n in nodes) + " |")
    print("| --- | " + " | ".join("--- | ---" for _ in nodes) + " |")
    for t in shown:
        cells = []
        for n in nodes:
            pt = next((p for p in by_node[n] if p[0] == t), None)
            cells.append(f"{pt[1] / 2**20:.1f} | {pt[2] / 1024:.1f}" if pt else "– | –")
        print(f"| {t / 60:.1f} | " + " | ".join(cells) + " |")
    print()
    # Elections: each node's Raft term at the first and last sample where it answered (the group is led from
    # before the first sample, so any rise is an election during the soak).
    terms = defaultdict(list)
    for r in samples:
        if r.get("term", "").strip().isdigit():
            terms[r["node"]].append(int(r["term"]))
    if terms:
        cells = [f"{n} {ts[0]} → {ts[-1]}" for n, ts in sorted(terms.items())]
        rises = max(ts[-1] - ts[0] for ts in terms.values())
        print(f"Raft term, first → last sample: {', '.join(cells)}; elections during the soak: {rises}")
        print()
    print("| slice | start (min) | acked | received | acked msg/s | received msg/s | e2e p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in slices:
        p99 = int(float(s["p99_us"])) / 1000
        print(f"| {s['slice']} | {int(s['start_s']) / 60:.1f} | {s['sent']} | {s['received']} | {s['send_rate']} | {s['recv_rate']} | {p99:.1f} |")

    # SVG: store MiB (solid) and RSS MiB (dashed) per node over minutes.
    w, h, left, bottom = 720, 360, 60, 40
    tmax = max(times) if times else 1
    values = [p[1] / 2**20 for pts in by_node.values() for p in pts] + [p[2] / 1024 for pts in by_node.values() for p in pts]
    ymax = max(values + [1])

    def x(t):
        return left + (w - left - 20) * t / max(tmax, 1)

    def y(v):
        return h - bottom - (h - bottom - 20) * v / ymax

    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="20" x2="{left}" y2="{h - bottom}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">minutes</text>',
        f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">MiB</text>',
    ]
    for i in range(5):
        v = ymax * i / 4
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        t = tmax * i / 4
        out.append(f'<text x="{x(t):.1f}" y="{h - bottom + 14}" text-anchor="middle">{t / 60:.0f}</text>')
    for k, n in enumerate(nodes):
        pts = by_node[n]
        c = colors[k % 3]
        store = " ".join(f"{x(t):.1f},{y(b / 2**20):.1f}" for t, b, _ in pts)
        rss = " ".join(f"{x(t):.1f},{y(r / 1024):.1f}" for t, _, r in pts)
        out.append(f'<polyline fill="none" stroke="{c}" points="{store}"/>')
        out.append(f'<polyline fill="none" stroke="{c}" stroke-dasharray="4 3" points="{rss}"/>')
        out.append(f'<text x="{w - 200}" y="{30 + 14 * k}" fill="{c}">{n}: store (solid), RSS (dashed)</text>')
    out.append("</svg>")
    open(f"{d}/soak.svg", "w").write("\n".join(out))


if __name__ == "__main__":
    if sys.argv[1] == "--slice":
        slice_line(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        report(sys.argv[1])
