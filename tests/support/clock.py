"""A fake clock for code that takes `clock: Callable[[], float]` (the aggregator's engine and lease elector;
later the agent's runner, loop and stream): it stands still until a test moves it."""


class FakeClock:
    """Call it for the current fake time in seconds; `step(seconds)` moves it forward."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def step(self, seconds: float) -> None:
        self.t += seconds
