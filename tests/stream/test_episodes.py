"""Floods of identical events are episodes (agent/base/episodes.py, agent/stream/episodes.py, the gpu_events
Tracker): "800,000 log lines that were 29 distinct errors" reach the aggregator as 29 records with their counts.

The flood goes through the real parts: the kernel-log reader on a file in /dev/kmsg record format, the gpu_events
collector under its runner, the stream client with its spool, real gRPC to a real aggregator replica on loopback.
"""
from __future__ import annotations

import json
import resource

from agent.base.kmsg import RING_RECORDS
from agent.base.findings import EVENT, WARNING, bad
from agent.run.runner import CollectorRunner
from agent.sources.gpu_events import rules
from agent.stream.episodes import EventEpisodes
from tests.gpu_events.helpers import Node
from tests.stream.helpers import client, replica, wait_for
from tests.support.clock import FakeClock

NV = [f"0000:{b:02x}:00.0" for b in (0x1b, 0x2c, 0x3d, 0x4e, 0x9b, 0xac, 0xbd, 0xce)]
AMD = "0000:0c:00.0"
INFO_XIDS = (13, 31, 43)  # application faults: info events
BLOCKS = ("umc", "gfx", "sdma")  # amdgpu correctable errors: info events


def distinct_lines() -> list[str]:
    """29 distinct errors: 27 info events (Xid 13/31/43 on 8 GPUs, correctable RAS in 3 blocks) and 2 fatal ones
    (Xid 79 on one GPU, an uncorrectable amdgpu RAS error on another)."""
    out = []
    for pci in NV:
        short = pci[:-2]
        for x in INFO_XIDS:
            out.append(f"NVRM: Xid (PCI:{short}): {x}, pid={{pid}}, name=python3, Graphics Exception: ESR 0x{{pid}}")
    for b in BLOCKS:
        out.append(f"amdgpu {AMD}: amdgpu: {{n}} new correctable hardware errors detected in {b} block")
    out.append(f"NVRM: Xid (PCI:{NV[0][:-2]}): 79, pid={{pid}}, name=python3, GPU has fallen off the bus.")
    out.append(f"amdgpu 0000:0d:00.0: {{{{1}}}}uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!")
    return out


def write_flood(node: Node, total: int) -> dict[int, int]:
    """`total` kernel records cycling through the 29 errors, pids and counts varying; -> how many of each."""
    lines = distinct_lines()
    per = {i: 0 for i in range(len(lines))}
    with node.kmsg.open("w") as f:
        for seq in range(1, total + 1):
            i = seq % len(lines)
            per[i] += 1
            msg = lines[i].format(pid=1000 + seq % 977, n=1 + seq % 5)
            f.write(f"3,{seq},{seq * 10},-;{msg}\n")
    return per


def spy(r):
    """Every event the replica received, decoded."""
    got = []
    engine = r.replica.engine
    batch = engine.batch

    def wrapped(node, epoch, boot_id, events, *args, **kw):
        events = list(events)
        got.extend(events)
        return batch(node, epoch, boot_id, events, *args, **kw)
    engine.batch = wrapped
    return got


def test_800000_lines_of_29_distinct_errors_are_29_episodes_on_the_stream(tmp_path):
    node = Node(tmp_path / "node", {**{p: "nvidia" for p in NV}, AMD: "amd"})
    total = 800_000
    per = write_flood(node, total)
    r, applied = replica()
    got = spy(r)
    c = client(tmp_path, r.port, episode_update_seconds=3600.0)
    collector = node.collector(max_records_per_read=100_000)
    runner = CollectorRunner(collector)
    runner.timeout = 120.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    try:
        c.start()
        cycles = 0
        while True:  # the reader takes max_records_per_read per cycle, as on a live node
            result = runner.run_once()
            assert result.success, result.output.findings
            c.observe(result)
            cycles += 1
            if collector._state.kmsg_seq == total:
                break
            # the shared kmsg feed hands out at most its ring (RING_RECORDS) per read: a backlog goes in turns
            assert cycles <= total // (RING_RECORDS // 2) + 2
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        events = [f for f in result.output.findings if f.is_event]
        # Held state stays at the distinct errors: 2 sticky episodes, not ~55,000 sticky entries.
        assert len(collector._state.sticky) == 2
        assert sorted(s.count for s in collector._state.sticky) == sorted([per[27], per[28]])
        wait_for(lambda: c.spool.stats()["pending_info"] == 0 and c.spool.stats()["pending_state"] == 0, 60,
                 "the spool to drain")
        info = [e for e in got if e.kind == 2 and e.check.startswith("gpu.")]
        # One record per distinct info error: each episode's first occurrence, sent at once in the first cycle
        # (the updates of their counts wait for episode_update_seconds).
        assert len(info) == 27, [(e.check, e.entity, e.value) for e in info]
        assert len({(e.check, e.entity, e.value) for e in info}) == 27
        fatal = [e for e in got if e.kind == 1 and e.status == 2 and e.check.startswith("gpu.")]
        assert sorted((e.check, e.entity) for e in fatal) == sorted([("gpu.xid", "gpu0"), ("gpu.ras", "pci:0000:0d:00.0")])
        # The counts are there: metrics and the last cycle's findings (one per distinct error, with its count).
        folded = result.output.metrics.value("vigil_gpu_events_folded_total")
        # every line but each episode's first: the 2 sticky ones once, the 27 shown-once ones once per read
        assert folded == total - 2 - 27 * cycles
        assert len(events) == 27 and all(f.count and f.count > 1 for f in events)
        # Memory: the flood's records are read a cycle at a time and folded; nothing holds the 800,000 lines.
        assert grown < 300 * 1024, f"peak RSS grew {grown} KiB"
    finally:
        c.stop()
        r.stop()
        collector.close()
    # The persisted state holds the two sticky episodes with their counts, not one entry per line.
    doc = json.loads((node.state_dir / "gpu_events.json").read_text())
    assert len(doc["sticky"]) == 2 and sum(s["count"] for s in doc["sticky"]) == per[27] + per[28]


def test_episode_updates_carry_the_count_first_and_last_seen(tmp_path):
    """After the first occurrence, the stream sends the episode's count now and then, not one event per line."""
    r, _ = replica()
    got = spy(r)
    c = client(tmp_path, r.port, episode_update_seconds=0.0)
    try:
        c.start()
        xid = bad("gpu.xid", "gpu", "gpu3", "Xid 13: graphics engine exception", "info", value=13, kind=EVENT,
                  count=40_000, first_seen=1_780_000_000.0, last_seen=1_780_000_600.0)
        from agent.base.collector import Output
        from agent.run.runner import Result
        for _ in range(3):
            c.observe(Result("gpu_events", Output(findings=[xid]), True, 0.01))
        wait_for(lambda: len(got) >= 3, 20, "three records")
        counts = [e.occurrences for e in got]
        assert counts == [40_000, 80_000, 120_000]
        assert {e.first_seen_unix_ms for e in got} == {1_780_000_000_000}
        assert got[-1].last_seen_unix_ms == 1_780_000_600_000
        assert "x120000" in got[-1].message
    finally:
        c.stop()
        r.stop()


def test_episodes_window_updates_and_bound():
    clock = FakeClock()
    sent = []
    eps = EventEpisodes(lambda f, n, first, last, update: sent.append((f.entity, n, update)), update_seconds=60,
                        window_seconds=600, max_keys=3, clock=clock, wall=lambda: 1e9 + clock())
    oom = lambda e: bad("container.oom_kill", "container", e, "OOM", WARNING, kind=EVENT)  # noqa: E731
    eps.offer(oom("a"))
    for _ in range(99):
        eps.offer(oom("a"))
    assert sent == [("a", 1, False)]  # the first at once, the rest folded
    clock.step(61)
    eps.flush()
    assert sent[-1] == ("a", 100, True)
    clock.step(601)  # quiet for a window: the episode ends; the next one starts anew, sent at once
    eps.offer(oom("a"))
    assert sent[-1] == ("a", 1, False)
    # a flood of distinct keys: at most max_keys open, the evicted ones' unsent counts are sent, counted
    for i in range(1000):
        eps.offer(oom(f"k{i}"))
        eps.offer(oom(f"k{i}"))
    ms = eps.metrics()
    assert ms.value("vigil_stream_episodes") == 3
    assert ms.value("vigil_stream_episodes_evicted_total") == 998
    # an evicted key: its first (1) and its final count (2); an open one: its first so far
    assert sum(n for e, n, u in sent if e.startswith("k")) == 997 * (1 + 2) + 3 * 1


def test_a_flood_of_distinct_events_keeps_the_sticky_table_bounded(tmp_path):
    """Distinct fatal lines beyond rules.MAX_STICKY (e.g. written into /dev/kmsg by hand) fold into an existing
    episode: the table stays bounded, every one is counted, and the GPU stays fatal."""
    node = Node(tmp_path / "node", {NV[0]: "nvidia"})
    n = rules.MAX_STICKY * 3
    node.log(*(f"3,{i},{i},-;amdgpu 0000:{i % 256:02x}:{i // 256:02x}.0: {{1}}uncorrectable hardware error"
               f"(ERREVENT_{i}) detected!" for i in range(1, n + 1)))
    c = node.collector()
    reading = c.read()
    assert len(reading.sticky) == rules.MAX_STICKY
    assert sum(s.count for s in reading.sticky) == n
    assert reading.overflowed == n - rules.MAX_STICKY
    c.close()


def test_an_event_from_before_the_restart_never_fires_again(tmp_path):
    """A restarted agent (same boot, same state file) reading the same kernel log: no new event, no count doubled."""
    node = Node(tmp_path / "node", {p: "nvidia" for p in NV})
    write_flood(node, 2900)
    first = node.collector()
    r1 = first.read()
    first.close()
    again = node.collector()
    r2 = again.read()
    again.close()
    assert r2.once == []  # nothing shown again
    assert [(s.signature, s.count) for s in r2.sticky] == [(s.signature, s.count) for s in r1.sticky]
