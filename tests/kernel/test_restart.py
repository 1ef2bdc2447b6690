"""An agent restart over the same kernel log: the kernel keeps its ring, so a restarted agent's reader starts at
the oldest record again. Old lines must not come back as new episodes, and an episode still going on (an I/O
error burst that spans the restart) goes on as the same episode: counted, shown again only when due.

The kernel log here is a file in /dev/kmsg's record framing, as `agent snapshot` writes kmsg.txt
(agent/run/snapshot.py read_kmsg); the real /dev/kmsg case is tests/kernel/test_live_kmsg.py."""
from __future__ import annotations

from agent.base.findings import EVENT
from tests.kernel.helpers import Node, by_check, run

IOERR = "I/O error, dev nvme0n1, sector 123456 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2"
HUNG = "INFO: task containerd:2107 blocked for more than 122 seconds."


def restarted(node, **settings):
    """A new collector over the same state directory and kmsg content: the process restarted."""
    return node.collector(**settings)


def test_a_restart_over_the_same_ring_reports_no_old_episode(tmp_path):
    node = Node(tmp_path)
    node.log("Linux version 6.1.0-18-amd64", *[IOERR] * 50, HUNG, at=100)
    first = restarted(node)
    checks = by_check(run(first))
    (ev,) = checks["kernel.event.io_error"]
    assert ev.kind == EVENT and ev.value == 50
    assert "kernel.event.task_hung" in checks
    first.close()
    for _ in range(3):  # restarted again and again over the unchanged ring
        again = restarted(node)
        checks = by_check(run(again))
        again.close()
        assert not [f for f in checks if f.startswith("kernel.event.")], checks.keys()
        assert checks["kernel.kernel_deadlock"][0].is_fatal  # the condition is remembered, not re-fired
        assert checks["kernel.kernel_deadlock"][0].value == 1


def test_an_episode_spanning_a_restart_stays_one_episode(tmp_path):
    node = Node(tmp_path)
    node.log(*[IOERR] * 10, at=100)
    first = restarted(node, episode_seconds=300)
    assert by_check(run(first))["kernel.event.io_error"][0].value == 10
    first.close()
    node.log(IOERR, IOERR, at=160)  # the burst goes on while the agent restarts
    again = restarted(node, episode_seconds=300)
    assert "kernel.event.io_error" not in by_check(run(again))  # counted in the open episode, not a new one
    node.log(IOERR, at=420)  # past the window since it was shown: shown again, with the count since
    ev = by_check(run(again))["kernel.event.io_error"][0]
    again.close()
    assert ev.value == 13 and ev.message.startswith("IOError: 3 matching lines (13 in this episode)")


def test_a_new_boot_starts_episodes_afresh(tmp_path):
    node = Node(tmp_path)
    node.log(*[IOERR] * 3, at=100)
    c = restarted(node)
    run(c)
    c.close()
    node.boot("boot-b")
    node.kmsg.write_text("")
    node.seq = 0
    node.log(IOERR, at=5)
    again = restarted(node)
    ev = by_check(run(again))["kernel.event.io_error"][0]
    again.close()
    assert ev.value == 1


def test_a_state_file_from_before_episodes_or_a_bad_episode_record(tmp_path):
    """A kernel.json without "episodes" (an older agent) loads with its cursor; one with a broken episode
    record is ignored whole (logged), as any unreadable state: old lines may then be announced once more, new
    ones are never missed."""
    import json
    node = Node(tmp_path)
    node.log(IOERR, HUNG, at=100)
    c = restarted(node)
    run(c)
    c.close()
    doc = node.state()
    assert doc["episodes"]["IOError"]["total"] == 1
    del doc["episodes"]
    (node.state_dir / "kernel.json").write_text(json.dumps(doc))
    again = restarted(node)
    checks = by_check(run(again))
    again.close()
    assert "kernel.event.io_error" not in checks and checks["kernel.kernel_deadlock"][0].is_fatal
    doc["episodes"] = {"IOError": {"reason": "IOError", "severity": "loud", "action": None, "opened_usec": 1,
                                   "shown_usec": 1}}
    (node.state_dir / "kernel.json").write_text(json.dumps(doc))
    node.log(IOERR, at=200)
    again = restarted(node)
    ev = by_check(run(again))["kernel.event.io_error"]
    again.close()
    assert len(ev) == 1  # a fresh state: the ring is judged again, its matches one episode


def test_a_corrupt_state_file_is_set_aside_not_a_failing_source(tmp_path):
    """Regressions (bench/fuzz_parsers.py, target "kernel rules / state file"): a condition whose count or
    reasons had the wrong type loaded, then failed the findings at every cycle; "episodes" not an object
    raised AttributeError out of the loader, which the collector does not catch. Now the file is refused
    whole (logged) and the agent starts afresh: the ring is judged again (within the rule files' lookback,
    as on a first start: the line here is 10 s old)."""
    import json
    node = Node(tmp_path)
    node.log(HUNG, at=9_990)
    c = restarted(node)
    run(c)
    c.close()
    good = node.state()
    for broken in ({**good, "active": {"KernelDeadlock": {**good["active"]["KernelDeadlock"], "count": "3"}}},
                   {**good, "active": {"KernelDeadlock": {**good["active"]["KernelDeadlock"], "reasons": 7}}},
                   {**good, "episodes": 5}):
        (node.state_dir / "kernel.json").write_text(json.dumps(broken))
        again = restarted(node)
        out = run(again)
        again.close()  # a process that ended: the shared reader goes with it
        dead = by_check(out)["kernel.kernel_deadlock"][0]
        assert dead.is_fatal and dead.value == 1, dead
