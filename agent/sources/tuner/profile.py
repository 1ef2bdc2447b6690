"""The tuner's profile as written in the config (or the shipped default), validated into entries.

Sysctl keys contain dots, so the profile is a mapping from key to either a value (policy minimum) or
{value: ..., policy: ...}:

    profile:
      vm.max_map_count: 262144
      net.ipv4.tcp_rmem: "4096 87380 16777216"
      net.ipv4.tcp_congestion_control: {value: bbr, policy: exact}
      net.core.rmem_max: {policy: report}
    file_limits:
      containerd:
        nofile: 1048576                                   # soft and hard
        memlock: {soft: unlimited, hard: unlimited, policy: minimum}

Every problem is a ConfigError whose message starts with the full dotted key (the CLI exits 78 with it).
"""
from __future__ import annotations

import re
from importlib import resources
from typing import Any, Mapping

from agent.base.config import MAX_FILE_BYTES, ConfigError, decode_text, load_yaml
from .policy import MINIMUM, POLICIES, REPORT, RESOURCES, RlimitEntry, SysctlEntry
from .values import UNLIMITED, Value, fmt, is_numeric, parse

DEFAULT_PROFILE = "gpu-training.yaml"

_NAME = re.compile(r"[A-Za-z0-9_:@+.\-]+")


def key_parts(key: str) -> tuple[str, ...]:
    """Path components of a sysctl key under <procfs>/sys. As in sysctl(8), a "/" inside a key stands for a
    "." inside one name (net.ipv4.conf.eth0/100.rp_filter -> net/ipv4/conf/eth0.100/rp_filter). Raises
    ValueError for anything that could leave /proc/sys."""
    parts = tuple(p.replace("/", ".") for p in key.split("."))
    for p in parts:
        if not p or p in (".", "..") or not _NAME.fullmatch(p):
            raise ValueError(f"not a sysctl key: {key!r}")
    return parts


def _show(v: Any) -> str:
    return f"{repr(v)[:80]} ({type(v).__name__})"


def _policy(raw: Any, key: str) -> str:
    if raw not in POLICIES:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, POLICIES))}, got {_show(raw)}")
    return raw


def _value(raw: Any, key: str) -> Value:
    # Floats and booleans are refused rather than guessed: the kernel takes integers and words only.
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ConfigError(f"{key}: expected an integer or a string such as \"4096 87380 16777216\", got {_show(raw)}")
    value = parse(str(raw))
    if not value:
        raise ConfigError(f"{key}: empty value")
    for f in value:  # the kernel's sysctls are at most 64-bit (unsigned long); a longer number is a typo
        if isinstance(f, int) and not -(2**63) <= f < 2**64:
            raise ConfigError(f"{key}: {len(str(abs(f)))}-digit number; a sysctl holds at most 64 bits")
    return value


def parse_sysctls(raw: Any, prefix: str) -> list[SysctlEntry]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of sysctl key to value, got {_show(raw)}")
    entries = []
    for key, spec in raw.items():
        where = f"{prefix}.{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{where}: a sysctl key must be a string")
        try:
            key_parts(key)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"value", "policy"}
            if unknown:
                raise ConfigError(f"{where}.{sorted(map(str, unknown))[0]}: unknown key (known: policy, value)")
            policy = _policy(spec.get("policy", MINIMUM), f"{where}.policy")
            if spec.get("value") is None:
                if policy != REPORT:
                    raise ConfigError(f"{where}.value: required with policy {policy!r}")
                value = None
            else:
                value = _value(spec["value"], f"{where}.value")
            value_key = f"{where}.value"
        else:
            policy, value, value_key = MINIMUM, _value(spec, where), where
        if policy == MINIMUM and value is not None and not is_numeric(value):
            raise ConfigError(f"{value_key}: policy 'minimum' needs numbers, got {fmt(value)!r}"
                              " (use policy 'exact' or 'report' for words)")
        entries.append(SysctlEntry(key, value, policy))
    return entries


def _limit(raw: Any, key: str) -> float:
    if raw in ("unlimited", "infinity"):
        return UNLIMITED
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 2**63:  # rlim_t below RLIM_INFINITY
        raise ConfigError(f"{key}: expected a non-negative integer below 2**63 or 'unlimited', got {_show(raw)}")
    return raw


def parse_file_limits(raw: Any, prefix: str) -> list[RlimitEntry]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of process name to limits, got {_show(raw)}")
    entries = []
    for process, limits in raw.items():
        where = f"{prefix}.{process}"
        if not isinstance(process, str) or not process.strip():
            raise ConfigError(f"{where}: a process name must be a non-empty string")
        if not isinstance(limits, Mapping):
            raise ConfigError(f"{where}: expected a mapping of resource ({', '.join(RESOURCES)}) to limit,"
                              f" got {_show(limits)}")
        for resource, spec in limits.items():
            rkey = f"{where}.{resource}"
            if resource not in RESOURCES:
                raise ConfigError(f"{rkey}: unknown resource (known: {', '.join(RESOURCES)})")
            if isinstance(spec, Mapping):
                unknown = set(spec) - {"soft", "hard", "policy"}
                if unknown:
                    raise ConfigError(f"{rkey}.{sorted(map(str, unknown))[0]}: unknown key (known: hard, policy, soft)")
                policy = _policy(spec.get("policy", MINIMUM), f"{rkey}.policy")
                soft = None if spec.get("soft") is None else _limit(spec["soft"], f"{rkey}.soft")
                hard = None if spec.get("hard") is None else _limit(spec["hard"], f"{rkey}.hard")
                if soft is None and hard is None and policy != REPORT:
                    raise ConfigError(f"{rkey}: give soft, hard or both")
                if soft is not None and hard is not None and soft > hard:
                    raise ConfigError(f"{rkey}.soft: must not exceed hard ({spec['soft']} > {spec['hard']})")
            else:
                policy, soft = MINIMUM, _limit(spec, rkey)
                hard = soft
            entries.append(RlimitEntry(process, resource, soft, hard, policy))
    return entries


def default_profile() -> dict[str, Any]:
    """The shipped profile (agent/sources/tuner/profiles/gpu-training.yaml) as a raw mapping with keys profile, file_limits."""
    try:  # read as a config file is: size-capped, UTF-8, nesting bounded (an operator may edit it in an image)
        with resources.files(__package__).joinpath("profiles", DEFAULT_PROFILE).open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{DEFAULT_PROFILE}: cannot read: {e.strerror or e}") from None
    raw = load_yaml(decode_text(data, DEFAULT_PROFILE), DEFAULT_PROFILE)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{DEFAULT_PROFILE}: expected a mapping with keys file_limits, profile")
    unknown = set(raw) - {"profile", "file_limits"}
    if unknown:
        raise ConfigError(f"{DEFAULT_PROFILE}: {sorted(unknown)[0]}: unknown key (known: file_limits, profile)")
    return raw
