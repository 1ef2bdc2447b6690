"""Agent configuration: YAML, validated against dataclass schemas; an unknown key or a bad value is a
ConfigError that names the key (the CLI exits 78 with it).

Each collector declares its own section (a dataclass with defaults), so adding a source adds its keys here
without touching this module. Thresholds live in those sections next to the collector that uses them.
"""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import math
import os
import re
import socket
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import yaml

DEFAULT_PORT = 9847  # not taken by node_exporter (9100), dcgm-exporter (9400) or AMD's exporter (5000)

# Bounds every value and file gets, whatever its field (DESIGN §0: a bad one exits 78, never a traceback).
MAX_FILE_BYTES = 1 << 20  # a config or a profile is a few KB; the cap also ends `--config /dev/zero`
MAX_DEPTH = 32  # nesting of YAML/JSON collections; real configs nest 4 deep, recursion would overflow first
MAX_SECONDS = 86400.0  # any *_seconds field: past a day an interval or deadline is a typo, not a wish
MAX_COUNT = 2**31 - 1  # any int field: non-negative and fits a C int (sqlite, ctypes, prlimit all take it)
MAX_STRING = 4096  # a path or a name; PATH_MAX on Linux
MAX_DEVICES = 4096  # GPUs or RDMA ports one node could have, with room to spare


class ConfigError(Exception):
    """A configuration problem; the message starts with the dotted key at fault."""


@dataclass
class CollectorSettings:
    """Scheduling settings every collector section shares."""

    enabled: bool = True
    interval_seconds: float = 10.0
    timeout_seconds: float = 8.0  # hard deadline of one read; past it the read is abandoned

    def check(self, prefix: str) -> None:
        pass  # both are durations: the builder's rule for *_seconds (finite, > 0, at most a day) covers them


@dataclass
class Expectations:
    """What this node should have. Overrides node.json; None means "not declared"."""

    gpus: int | None = None
    rdma_ports: int | None = None
    # The GPUs' PCI addresses ("0000:0c:00.0", any spelling nvidia-smi or amd-smi prints): lets a report of a
    # missing GPU name it even when it fell off the bus before the agent started.
    gpu_bus_ids: list[str] | None = None

    def check(self, prefix: str) -> None:
        from .pci import normalize

        for key in ("gpus", "rdma_ports"):
            value = getattr(self, key)
            if value is not None:
                in_range(f"{prefix}.{key}", value, 0, MAX_DEVICES)
        if self.gpu_bus_ids is not None:
            if len(self.gpu_bus_ids) > MAX_DEVICES:
                raise ConfigError(f"{prefix}.gpu_bus_ids: {len(self.gpu_bus_ids)} entries, at most {MAX_DEVICES}")
            for i, addr in enumerate(self.gpu_bus_ids):
                if normalize(addr) is None:
                    raise ConfigError(f"{prefix}.gpu_bus_ids[{i}]: {_show(addr)} is not a PCI address "
                                      "(e.g. 0000:0c:00.0)")
            self.gpu_bus_ids = [normalize(a) for a in self.gpu_bus_ids]  # type: ignore[misc]


@dataclass
class AgentSettings:
    node_name: str = ""  # default: $NODE_NAME, else the host name
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    expect: Expectations = field(default_factory=Expectations)

    def check(self, prefix: str) -> None:
        if self.node_name:  # "": $NODE_NAME or the host name
            check_node_name(self.node_name, f"{prefix}.node_name")
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
        for key, hi in (("batch_size", 10_000), ("raise_after", 1000), ("clear_after", 1000),
                        ("max_events", 10_000_000), ("max_info", 10_000_000), ("max_info_bytes", 1 << 40),
                        ("memory_max_info_bytes", 1 << 40)):
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1, got {value}")
            in_range(f"{prefix}.{key}", value, 1, hi)
        if self.aggregator:  # checked at load, so `--once` refuses it too and not only the serving agent
            try:
                split_targets(self.aggregator)
            except ValueError as e:
                raise ConfigError(f"{prefix}.aggregator: {e}") from None


AMD_EXPORTER_SOCKET = "/var/lib/amd-metrics-exporter/amdgpu_device_metrics_exporter_grpc.socket"
SUN_PATH_MAX = 107  # bytes of a unix socket path (sockaddr_un.sun_path is 108, NUL included)


@dataclass
class AmdDevicePluginSettings:
    """The GPU health service AMD's device plugin reads from the ROCm device metrics exporter (agent/run/
    amd_health.py). Off by default: the exporter and Vigil must not both serve the socket."""

    enabled: bool = False
    socket_path: str = AMD_EXPORTER_SOCKET  # where AMD's device plugin looks (its path is fixed there)

    def check(self, prefix: str) -> None:
        if not os.path.isabs(self.socket_path):
            raise ConfigError(f"{prefix}.socket_path: must be an absolute path, got {_short(self.socket_path)}")
        if len(os.fsencode(self.socket_path)) > SUN_PATH_MAX:
            raise ConfigError(f"{prefix}.socket_path: at most {SUN_PATH_MAX} bytes (a unix socket path), got "
                              f"{len(os.fsencode(self.socket_path))}")
        if self.socket_path.endswith("/"):
            raise ConfigError(f"{prefix}.socket_path: names a directory, not a socket file")


def in_range(key: str, value: float, lo: float, hi: float) -> None:
    """A per-field range for a Settings' check(): `key` is the full dotted key."""
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be within {_num(lo)}..{_num(hi)}, got {_num(value)}")


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e16 else _short(x)


_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: "²".isdigit() is True and int("²") raises
_HOST = re.compile(r"\[[0-9A-Fa-f:.%\w-]+\]|[A-Za-z0-9_.:%-]*")
_NODE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")  # a Kubernetes node (DNS) name, any case


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    """HOST:PORT to listen on ("" or "0.0.0.0" for every IPv4 address, [::] for IPv6; port 0: any free one)."""
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535 or not _HOST.fullmatch(host):
        raise ConfigError(f"{key}: expected HOST:PORT with a port within 0..65535, got {_short(value)}")
    return host.strip("[]") or "0.0.0.0", int(port)


def split_targets(value: str) -> list[str]:
    """HOST:PORT[,HOST:PORT...] to connect to (the aggregator): a host, and a port within 1..65535.
    Raises ValueError saying what was expected."""
    out = []
    for part in value.split(","):
        part = part.strip()
        host, sep, port = part.rpartition(":")
        if (not sep or not host.strip(":[]") or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535
                or any(c.isspace() or not c.isprintable() for c in host)):
            raise ValueError(f"expected HOST:PORT[,HOST:PORT...] with ports within 1..65535, got {_short(value)}")
        out.append(part)
    return out


# -- flags: the same rules for command-line values; argparse names the flag and the CLIs exit 64 -------------
def number_flag(lo: float, hi: float, *, integer: bool = False, above: bool = False) -> Callable[[str], Any]:
    """An argparse `type`: a finite number (or an integer) within lo..hi, lo itself excluded when `above`."""
    what = "an integer" if integer else "a number"

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {_short(text)}") from None
        low_ok = value > lo if above else value >= lo
        if not (math.isfinite(value) and low_ok and value <= hi):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {_num(lo)} and at most {_num(hi)}, "
                                             f"got {_short(text)}")
        return value
    parse.__name__ = "integer" if integer else "number"  # argparse's "invalid <name> value" fallback
    return parse


def listen_flag(text: str) -> str:
    """An argparse `type` for HOST:PORT to listen on; the text is kept as given (gRPC takes it as is)."""
    try:
        parse_listen(text, "")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).lstrip(": ")) from None
    return text


def check_node_name(value: str, key: str) -> str:
    if not _NODE.fullmatch(value):
        raise ConfigError(f"{key}: not a node name (letters, digits, '-', '.', '_', at most 253), got "
                          f"{_short(value)}")
    return value


@dataclass
class Config:
    agent: AgentSettings
    sections: dict[str, Any]  # collector name -> its settings dataclass
    stream: StreamConfig = field(default_factory=StreamConfig)
    amd_device_plugin: AmdDevicePluginSettings = field(default_factory=AmdDevicePluginSettings)

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
        body = text if text is not None else read_text_file(path)  # type: ignore[arg-type]
        raw = load_yaml(body, src)
    return from_mapping(raw, schemas)


# -- files: size-capped, strictly UTF-8, nesting bounded -----------------------------------------------------
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),  # UTF-32 LE starts as UTF-16 LE
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def read_text_file(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> str:
    """A config-like file's text, or a ConfigError naming the file. Reads at most `limit` + 1 bytes, so a
    device or a pipe that never ends (/dev/zero) is refused instead of read for ever."""
    src = os.fspath(path)
    try:
        with open(src, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"{src}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the name
        raise ConfigError(f"{_short(src)}: cannot read: {e}") from None
    return decode_text(data, src, limit)


def decode_text(data: bytes, src: str, limit: int = MAX_FILE_BYTES) -> str:
    if len(data) > limit:
        raise ConfigError(f"{src}: larger than {limit} bytes (is it the right file?)")
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{src}: encoded as {name} (it starts with a byte-order mark); save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):  # still UTF-8: some editors on Windows write it
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{src}: not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8") from None


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that bounds nesting (a 5,000-deep list would overflow the composer's recursion), refuses
    duplicate keys (YAML keeps the last one silently) and reports an over-long integer with its position."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: construct_mapping says so with the position
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_short(key)}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses int() of more than 4,300 digits
            raise yaml.constructor.ConstructorError(None, None, f"integer too long ({len(node.value)} digits)",
                                                    node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str, src: str) -> Any:
    """Parse YAML text into plain values; any problem is a ConfigError naming `src` (and the line)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data() or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{src}: not valid YAML: {where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: not valid YAML: {' '.join(str(e).split())[:200]}") from None
    except (ValueError, OverflowError, TypeError) as e:  # a constructor's own error (a date like 2024-02-30)
        raise ConfigError(f"{src}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def check_json_depth(text: str, src: str, limit: int = MAX_DEPTH) -> None:
    """json.loads recurses once per level (a 100,000-deep document raises RecursionError): count the levels
    first, outside strings."""
    depth, in_string, escaped = 0, False, False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                raise ConfigError(f"{src}: nested deeper than {limit} levels")
        elif c in "]}":
            depth -= 1


def from_mapping(raw: Any, schemas: Mapping[str, type]) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"<top>: expected a mapping, got {type(raw).__name__}")
    known = {"agent", "stream", "amd_device_plugin", *schemas}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{_part(key)}: unknown section (known: {', '.join(sorted(known))})")

    def section(name: str) -> Any:  # an empty section (`gpu:`) is the defaults; `gpu: false` is an error
        return {} if raw.get(name) is None else raw[name]
    agent = build(AgentSettings, section("agent"), "agent")
    sections = {name: build(cls, section(name), name) for name, cls in schemas.items()}
    return Config(agent, sections, build(StreamConfig, section("stream"), "stream"),
                  build(AmdDevicePluginSettings, section("amd_device_plugin"), "amd_device_plugin"))


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking every key, and every value's type and range.

    The general rules, whatever the field: a float is finite; an int is within 0..MAX_COUNT; a field named
    *_seconds (and each value of a mapping so named) is a duration within (0, MAX_SECONDS]; a string has no
    NUL and at most MAX_STRING characters. Ranges particular to a field are its class's check(prefix)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}.{_part(key)}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}", k) for k, v in raw.items()}
    obj = cls(**kwargs)
    obj.__dict__["_given"] = frozenset(kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(prefix)
    return obj


def given(settings: Any) -> frozenset[str]:
    """The keys the config file set for this section (the rest are the dataclass's defaults)."""
    return settings.__dict__.get("_given", frozenset())


def _coerce(tp: Any, value: Any, key: str, name: str) -> Any:
    """`value` as type `tp`; `key` is the dotted key for messages, `name` the field's own name (for the
    *_seconds rule, which applies to the values of a mapping field too)."""
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
                return _coerce(arg, value, key, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: unexpected value {_show(value)}")
    if origin is Literal:
        if isinstance(value, (list, dict)) or value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, args))}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]", name) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        out = {}
        for k, v in value.items():
            ck = _coerce(args[0], k, f"{key}.{_part(k)}", "")  # a key is a name or a number, not a duration
            out[ck] = _coerce(args[1], v, f"{key}.{_part(k)}", name)
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        if not 0 <= value <= MAX_COUNT:
            raise ConfigError(f"{key}: must be within 0..{MAX_COUNT}, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # a 400-digit integer
            raise ConfigError(f"{key}: must be a finite number, got {_short(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: must be a finite number, got {number}")
        if name.endswith("_seconds") and not 0 < number <= MAX_SECONDS:
            raise ConfigError(f"{key}: must be > 0 and at most {MAX_SECONDS:.0f} (a day), got {_short(number)}")
        return number
    if tp is str:
        # Numbers become their text (a node called 7, an Xid as a mapping key); a float or a bool as a
        # string is a mistake worth naming (`spool_path: .nan` would otherwise be the file "nan").
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        if isinstance(value, int) and value.bit_length() > 64:
            raise ConfigError(f"{key}: expected a string, got {_short(value)}")
        text = str(value)
        if "\x00" in text or len(text) > MAX_STRING:
            raise ConfigError(f"{key}: expected a string without NUL of at most {MAX_STRING} characters")
        return text
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _short(value: Any, limit: int = 80) -> str:
    """A value for a message, never a screenful: a 400-digit integer is shown by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 14000 else 'over 4300'} digits"
    text = value if isinstance(value, str) else repr(value)
    return repr(text)[:limit] if isinstance(value, str) else text[:limit]


def _part(key: Any) -> str:
    """A mapping key as one part of a dotted key."""
    return _short(key) if not isinstance(key, str) else key[:80]


def _show(value: Any) -> str:
    return f"{_short(value)} ({type(value).__name__})"
