"""Real eBPF: the probe's maps are bounded. More connections close at once than the close-record map holds,
more (class, cgroup) pairs than the aggregate holds: overflow is counted and exported, the maps never grow,
and the counters stay right where they can (bytes read live stay counted, class totals stay exact)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.sources.netflow.probe import cgroup2_mount

from .helpers import CgroupClient, Scrape, connect, delta, exchange, flow, listener, make_collector

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def small(bpf_host):
    classes = {"t5_srv": ["127.77.5.1/32"], "t5_cli": ["127.77.5.2/32"], "t5b": ["127.77.6.1/32"],
               "t5c": ["127.77.7.1/32"], "t5d": ["127.77.8.1/32"]}
    c = make_collector({"classes": classes, "record_entries": 8, "agg_entries": 2})
    yield c
    c.close()


def test_more_closes_than_the_record_map_holds(small):
    start = Scrape(small)
    srv = listener("127.77.5.1")
    pairs = [connect(srv, src="127.77.5.2") for _ in range(24)]
    for p in pairs:
        p.up(1_000)
        p.down(100)
    live = Scrape(small, start.observation)  # all 48 sockets seen live: their closes go to records
    assert flow(live, start, "t5_srv") == (24_000, 2_400)
    for p in pairs:
        p.up(10)  # the last bytes, moved after the live read
        p.close()
    closed = Scrape(small, live.observation)
    # (>=, <=: the program sees every socket of the host, and another one closing now can take a record too)
    assert delta(closed, live, "vigil_netflow_map_overflows_total", map="records") >= 48 - 8
    assert closed.total("vigil_netflow_map_fill_ratio", map="records") == 1.0
    f = closed.finding("netflow.maps", "test-node")
    assert (f.status, f.severity) == ("unhealthy", "warning")
    # Inexact but never counted twice: the 8 records that fitted add their last 10 bytes, the others lose them.
    sent, received = flow(closed, start, "t5_srv")
    srv_sent, srv_received = flow(closed, start, "t5_cli")
    assert received == 2_400 and srv_sent == 2_400
    assert (sent - 24_000) % 10 == 0 and (srv_received - 24_000) % 10 == 0
    assert 0 < (sent - 24_000) // 10 + (srv_received - 24_000) // 10 <= 8
    after = Scrape(small, closed.observation)
    assert after.finding("netflow.maps", "test-node").status == "ok"  # judged per cycle
    assert flow(after, start, "t5_srv") == (sent, received)
    srv.close()


def test_more_pairs_than_the_aggregate_holds(small):
    before = Scrape(small)
    servers = {cls: listener(addr) for cls, addr in (("t5b", "127.77.6.1"), ("t5c", "127.77.7.1"),
                                                     ("t5d", "127.77.8.1"))}
    for i, srv in enumerate(servers.values()):
        exchange(srv, 1_000 * (i + 1), 10 * (i + 1), src="127.77.5.2")
    after = Scrape(small, before.observation)
    assert delta(after, before, "vigil_netflow_map_overflows_total", map="agg") > 0
    assert after.total("vigil_netflow_map_fill_ratio", map="agg") == 1.0
    # Four (class, cgroup) pairs in two slots: the overflow keeps the bytes per class, only the pod is lost.
    for i, cls in enumerate(servers):
        assert flow(after, before, cls) == (1_000 * (i + 1), 10 * (i + 1))
    assert flow(after, before, "t5_cli") == (60, 6_000)
    for srv in servers.values():
        srv.close()


def test_aggregate_slots_of_removed_cgroups_are_freed(bpf_host):
    """Pods come and go: the aggregate's slots of cgroups that no longer exist are freed (their last bytes
    counted first), so a node with many short-lived pods does not fill the map."""
    root = Path(cgroup2_mount())
    dirs = [root / f"vigil-nf-gc-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    c = make_collector({"classes": {"t11_srv": ["127.77.14.1/32"], "t11_cli": ["127.77.14.2/32"]},
                        "agg_entries": 4})
    srv = listener("127.77.14.1")
    try:
        start = Scrape(c)
        for d in dirs:
            d.mkdir()
            client = CgroupClient(d, srv, "127.77.14.2", up=300, down=30)
            client.run()
            client.close()
        full = Scrape(c, start.observation)
        assert full.total("vigil_netflow_map_fill_ratio", map="agg") == 0.75  # two cgroups + the server's
        assert flow(full, start, "t11_srv") == (600, 60)
        dirs[0].rmdir()
        after = Scrape(c, full.observation)
        freed = Scrape(c, after.observation)
        assert freed.total("vigil_netflow_map_fill_ratio", map="agg") == 0.5
        assert flow(freed, start, "t11_srv") == (600, 60)
        assert flow(freed, start, "t11_cli") == (60, 600)
    finally:
        srv.close()
        c.close()
        for d in dirs:
            if d.exists():
                d.rmdir()


def test_more_open_sockets_than_the_live_list_holds(bpf_host):
    """The list of open sockets (a slot array the kernel program fills and user space maps) is bounded too: a
    socket that finds no free slot is not read while it is open, is counted as a `live` overflow, and its bytes
    arrive whole at close, so the totals stay exact. (The program sees every socket of the host: other
    connections may hold slots too, hence the inequalities.)"""
    c = make_collector({"classes": {"t12_srv": ["127.77.15.1/32"], "t12_cli": ["127.77.15.2/32"]},
                        "live_entries": 8})
    srv = listener("127.77.15.1")
    try:
        start = Scrape(c)
        pairs = [connect(srv, src="127.77.15.2") for _ in range(12)]  # 24 sockets for 8 slots
        for p in pairs:
            p.up(1_000)
            p.down(100)
        live = Scrape(c, start.observation)
        assert delta(live, start, "vigil_netflow_map_overflows_total", map="live") >= 24 - 8
        assert live.total("vigil_netflow_map_fill_ratio", map="live") >= 7 / 8
        sent, received = flow(live, start, "t12_srv")
        assert sent <= 8 * 1_000 and received <= 8 * 100  # at most the listed clients were read live
        for p in pairs:
            p.up(10)
            p.close()
        closed = Scrape(c, live.observation)
        assert flow(closed, start, "t12_srv") == (12 * 1_010, 12 * 100)
        assert flow(closed, start, "t12_cli") == (12 * 100, 12 * 1_010)
    finally:
        srv.close()
        c.close()
