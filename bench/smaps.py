"""Where a process's resident memory is, from /proc/PID/status and /proc/PID/smaps (issue 15): VmRSS split into
anonymous (the heap, malloc arenas, thread stacks), file-backed (the interpreter's and the libraries' code and
read-only data) and shared memory, and the mappings that hold the most of it, grouped by file.

    .venv/bin/python bench/smaps.py PID [--top 15]

Used by agent_cost_bench.py (--live prints this for the running agent)."""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

KIB = 1024


def status(pid: int) -> dict[str, int]:
    """The Vm*/Rss* lines of /proc/PID/status, in bytes; Threads as a count."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")):
                out[key] = int(value.split()[0]) * KIB
            elif key == "Threads":
                out[key] = int(value)
    return out


def mappings(pid: int) -> list[dict]:
    """One row per mapping of /proc/PID/smaps: name ("[anon]" when it has none), permissions, size, Rss,
    Private_Clean, Private_Dirty, Anonymous (bytes)."""
    rows: list[dict] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head:
                continue
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header: range perms offset dev inode [name]
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                rows.append({"name": head[5] if len(head) > 5 else "[anon]", "perms": head[1], "size": hi - lo})
            elif head[0] in ("Rss:", "Private_Clean:", "Private_Dirty:", "Shared_Clean:", "Anonymous:") and rows:
                rows[-1][head[0][:-1]] = int(head[1]) * KIB
    return rows


def by_file(rows: list[dict]) -> list[dict]:
    """Rss per mapped file (anonymous mappings and thread stacks as one row each), the largest first."""
    total: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        name = r["name"]
        key = name if name.startswith("/") or name.startswith("[") else "[anon]"
        for k in ("Rss", "Private_Clean", "Private_Dirty", "Anonymous"):
            total[key][k] += r.get(k, 0)
        if "x" in r["perms"]:
            total[key]["text_rss"] += r.get("Rss", 0)
    return sorted(({"name": k, **v} for k, v in total.items()), key=lambda r: -r["Rss"])


def breakdown(pid: int, top: int = 15) -> dict:
    """VmRSS, RssAnon, RssFile, RssShmem, the thread count and the `top` files by Rss (MiB, one decimal)."""
    st = status(pid)
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    files = by_file(mappings(pid))
    return {"VmRSS": mib(st.get("VmRSS", 0)), "RssAnon": mib(st.get("RssAnon", 0)),
            "RssFile": mib(st.get("RssFile", 0)), "RssShmem": mib(st.get("RssShmem", 0)),
            "threads": st.get("Threads", 0),
            "top": [{"name": r["name"], "rss": mib(r["Rss"]), "text": mib(r.get("text_rss", 0)),
                     "private_clean": mib(r["Private_Clean"]), "dirty": mib(r["Private_Dirty"])}
                    for r in files[:top]]}


def table(b: dict) -> str:
    lines = [f"VmRSS {b['VmRSS']} MiB = anon {b['RssAnon']} + file {b['RssFile']} + shmem {b['RssShmem']}; "
             f"{b['threads']} threads",
             "| mapping | Rss MiB | of it text | private clean | dirty |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['rss']} | {r['text']} | {r['private_clean']} | {r['dirty']} |" for r in b["top"]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", type=int)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    b = breakdown(args.pid, args.top)
    print(json.dumps(b) if args.json else table(b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
