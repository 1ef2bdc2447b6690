"""Agent configuration: YAML, validated against dataclass schemas; an unknown key or a bad value is a
ConfigError that names the key (the CLI exits 78 with it).

Each collector declares its own section (a dataclass with defaults), so adding a source adds its keys here
without touching this module. Thresholds live in those sections next to the collector that uses them.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

DEFAULT_PORT = 9847  # not taken by node_exporter (9100), dcgm-exporter (9400) or AMD's exporter (5000)


class ConfigError(Exception):
    """A configuration problem; the message starts with the dotted key at fault."""


@dataclass
class CollectorSettings:
    """Scheduling settings every collector section shares."""

    enabled: bool = True
    interval_seconds: float = 10.0
    timeout_seconds: float = 8.0  # hard deadline of one read; past it the read is abandoned

    def check(self, prefix: str) -> None:
        if self.interval_seconds <= 0:
            raise ConfigError(f"{prefix}.interval_seconds: must be > 0, got {self.interval_seconds}")
        if self.timeout_seconds <= 0:
            raise ConfigError(f"{prefix}.timeout_seconds: must be > 0, got {self.timeout_seconds}")


@dataclass
class Expectations:
    """What this node should have. Overrides node.json; None means "not declared"."""

    gpus: int | None = None
    rdma_ports: int | None = None


@dataclass
class AgentSettings:
    node_name: str = ""  # default: $NODE_NAME, else the host name
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    expect: Expectations = field(default_factory=Expectations)

    def check(self, prefix: str) -> None:
        parse_listen(self.listen, f"{prefix}.listen")


@dataclass
class StreamConfig:
    """The health stream to the aggregator (DESIGN §6). The CLI flags --aggregator, --spool, --token-file and
    --tls-ca override these."""

    aggregator: str = ""  # HOST:PORT (the Service), or replicas comma-separated; "" = no stream
    spool_path: str = "/var/lib/vigil/spool.db"  # on a host path: survives agent restarts
    token_file: str = ""  # projected ServiceAccount token, audience vigil
    tls_ca: str = ""
    batch_size: int = 100
    heartbeat_seconds: float = 10.0
    raise_after: int = 1  # hysteresis: cycles a worse status must persist before it is sent
    clear_after: int = 2  # cycles a better status must persist before it is sent
    # Spool bounds; past one the oldest info events go first, then non-fatal state events, never a fatal one.
    max_events: int = 250_000
    max_info: int = 250_000
    max_info_bytes: int = 32 * 1024 * 1024  # pending info events on disk (about 240 bytes each)
    memory_max_info_bytes: int = 8 * 1024 * 1024  # the same while the spool file fails and events wait in memory
    backoff_max_seconds: float = 30.0

    def check(self, prefix: str) -> None:
        for key in ("batch_size", "raise_after", "clear_after", "max_events", "max_info", "max_info_bytes",
                    "memory_max_info_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("heartbeat_seconds", "backoff_max_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{prefix}.{key}: must be > 0, got {getattr(self, key)}")


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Config:
    agent: AgentSettings
    sections: dict[str, Any]  # collector name -> its settings dataclass
    stream: StreamConfig = field(default_factory=StreamConfig)

    @property
    def node_name(self) -> str:
        return self.agent.node_name or os.environ.get("NODE_NAME") or socket.gethostname()

    def section(self, name: str) -> Any:
        return self.sections[name]


def load(path: str | os.PathLike | None, schemas: Mapping[str, type], text: str | None = None) -> Config:
    """Read and validate a config file (or `text`); `schemas` maps section names to dataclasses."""
    raw: Any = {}
    if text is not None or path is not None:
        src = str(path) if path is not None else "<config>"
        try:
            body = text if text is not None else Path(path).read_text()  # type: ignore[arg-type]
        except OSError as e:
            raise ConfigError(f"{src}: cannot read: {e.strerror}") from None
        try:
            raw = yaml.safe_load(body) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{src}: not valid YAML: {e}") from None
    return from_mapping(raw, schemas)


def from_mapping(raw: Any, schemas: Mapping[str, type]) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"<top>: expected a mapping, got {type(raw).__name__}")
    known = {"agent", "stream", *schemas}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(known))})")
    agent = build(AgentSettings, raw.get("agent") or {}, "agent")
    sections = {name: build(cls, raw.get(name) or {}, name) for name, cls in schemas.items()}
    return Config(agent, sections, build(StreamConfig, raw.get("stream") or {}, "stream"))


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking every key and value's type."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}") for k, v in raw.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: unexpected value {_show(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return {_coerce(args[0], k, f"{key}") : _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
