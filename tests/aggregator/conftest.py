import pytest

from .helpers import Harness


@pytest.fixture
def fake():
    from agent.fakekube.server import FakeKube

    with FakeKube() as fk:
        yield fk


@pytest.fixture
def harness(fake):
    made = []

    def make(**cfg):
        h = Harness(fake, **cfg)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()
