"""When the aggregator freezes its objects (agent/aggregator/gcpolicy.py): as the streams grow, and refreshed when
many of the frozen ones have ended or the freeze is old. gc's calls are recorded, not made (no timing here: the
pauses it removes are measured in bench/fleet_bench.py)."""
from agent.aggregator.gcpolicy import FreezePolicy


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.streams = 0
        self.now = 0.0

    def policy(self, **kw) -> FreezePolicy:
        return FreezePolicy(lambda: self.streams, freeze=lambda: self.calls.append("freeze"),
                            unfreeze=lambda: self.calls.append("unfreeze"),
                            collect=lambda: self.calls.append("collect"), clock=lambda: self.now, **kw)


def test_streams_connecting_are_frozen_every_step_not_every_tick():
    r = Recorder()
    p = r.policy(step=256)
    for n in range(0, 10001, 50):  # 10,000 agents connecting, 50 a tick
        r.streams = n
        p.tick()
    assert r.calls == ["freeze"] * p.freezes
    # at the first tick 256 or more past the last freeze: 300, 600, ... (ticks of 50): 33 freezes to 10,000
    assert p.freezes == 33
    assert p.frozen_at >= 10000 - 256
    before = len(r.calls)
    for _ in range(100):  # steady: nothing more
        p.tick()
    assert len(r.calls) == before


def test_a_quarter_of_the_frozen_streams_gone_refreshes_the_freeze_once():
    r = Recorder()
    p = r.policy(step=256)
    r.streams = 4000
    p.tick()
    assert r.calls == ["freeze"]
    r.streams = 2900  # fewer than three quarters of 4,000 remain: their cycles could be frozen garbage
    p.tick()
    assert r.calls == ["freeze", "unfreeze", "collect", "freeze"]
    p.tick()
    assert p.refreshes == 1 and len(r.calls) == 4


def test_an_old_freeze_is_refreshed_at_max_age_even_when_the_count_holds():
    r = Recorder()
    p = r.policy(step=256, max_age=3600)
    r.streams = 1000
    p.tick()
    r.now = 3599
    p.tick()
    assert p.refreshes == 0
    r.now = 3600
    p.tick()
    assert p.refreshes == 1 and r.calls[-3:] == ["unfreeze", "collect", "freeze"]


def test_no_streams_never_freezes():
    r = Recorder()
    p = r.policy(step=256)
    for _ in range(10):
        p.tick()
    assert r.calls == []
