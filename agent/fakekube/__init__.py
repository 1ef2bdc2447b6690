"""A faithful fake Kubernetes API server (see :mod:`agent.fakekube.server`)."""

from .server import FakeKube, Fault, Faults, RequestRecord, TokenInfo

__all__ = ["FakeKube", "Fault", "Faults", "RequestRecord", "TokenInfo"]
