"""Rule files in node-problem-detector's system-log-monitor format (its config/kernel-monitor.json), so a
cluster moving from NPD brings its rules unchanged.

    {"plugin": "kmsg", "logPath": "/dev/kmsg", "lookback": "5m", "bufferSize": 10, "source": "kernel-monitor",
     "conditions": [{"type": "KernelDeadlock", "reason": "KernelHasNoDeadlock", "message": "kernel has no deadlock"}],
     "rules": [{"type": "temporary", "reason": "OOMKilling", "pattern": "Killed process \\\\d+ ..."},
               {"type": "permanent", "condition": "KernelDeadlock", "reason": "DockerHung", "pattern": "..."}]}

Semantics kept from NPD (pkg/systemlogmonitor): each new line is pushed into a buffer of the last `bufferSize`
lines, and a rule fires when its pattern matches at the END of those lines joined by "\\n" (NPD compiles
`pattern + \\z`), so a pattern may span lines. `skipList` lines are not matched. A temporary rule is an event,
a permanent one sets its condition. `lookback` (a Go duration) limits the first read of a boot to that much
recent log; `logPath`, `source`, `metricsReporting`, `pluginConfig`, `delay` and `startPattern` are accepted
and not used (Vigil reads the kernel log through its one reader).

Vigil's additions (optional, ignored by NPD's own JSON decoder, which skips unknown keys): a rule's
"severity" (fatal, warning, info) and "action" (the recommended action), and "vigil": {"severity": ...} on a
condition. Without them a permanent rule is fatal and a temporary one a warning.

Patterns are Go RE2 syntax, matched here with Python's re. The differences that matter are handled:
  * \\d \\w \\s \\b are ASCII-only in RE2: patterns compile with re.ASCII.
  * \\z (end of text) becomes \\Z; \\Q...\\E (literal text) is escaped; (?<name>...) becomes (?P<name>...);
    POSIX classes inside brackets ([[:digit:]], [[:alpha:]] ...) become their ASCII ranges.
  * What Python would read differently, or RE2 cannot take, is refused with the file, the rule and why:
    \\Z (RE2 has none), backreferences \\1..\\9 (RE2 has none; Python would take them), \\p{..}/\\pL Unicode
    classes, \\C, the (?U) flag, flags after the start of the pattern, lookaround, atomic groups and
    possessive repetition.
Python's re backtracks where RE2 is linear: a pathological pattern costs time, bounded by the buffer's size
(bufferSize lines of at most MAX_LINE characters each) and by the collector's deadline (a read that overruns
it is abandoned and reported, never hangs the agent).
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from agent.base.config import ConfigError, check_json_depth, read_text_file

PERMANENT, TEMPORARY = "permanent", "temporary"
SEVERITIES = ("fatal", "warning", "info")
MAX_BUFFER = 100  # lines a multi-line pattern may span (NPD's default is 10)
MAX_LINE = 4096  # characters of one log line that rules see
MAX_RULES = 1000
MAX_PATTERN = 4096
MAX_LOOKBACK = 366 * 86400.0

TOP_KEYS = {"plugin", "pluginConfig", "logPath", "lookback", "delay", "bufferSize", "source", "metricsReporting",
            "conditions", "rules", "skipList", "startPattern"}
RULE_KEYS = {"type", "condition", "reason", "pattern", "severity", "action"}
CONDITION_KEYS = {"type", "reason", "message", "vigil"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class Condition:
    type: str  # KernelDeadlock
    reason: str  # KernelHasNoDeadlock: the reason while the condition is false
    message: str
    severity: str | None = None  # Vigil: the condition's severity; default the worst of its rules


@dataclass(frozen=True)
class Rule:
    type: str  # permanent | temporary
    reason: str
    pattern: str  # as written (RE2)
    regex: re.Pattern  # the translated pattern, anchored at the end of the buffer
    condition: str | None = None
    severity: str = "fatal"
    action: str | None = None
    multiline: bool = False  # could match across a newline: matched against the buffer, else the last line
    source: str = ""  # "file.json rules[3]", for messages


@dataclass
class RuleSet:
    """One rule file."""

    name: str  # the file it came from
    conditions: list[Condition] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    buffer_size: int = 10
    lookback: float | None = None  # seconds; None = the whole boot
    skip: tuple[str, ...] = ()


# -- Go RE2 -> Python re -----------------------------------------------------------------------------------
_POSIX = {"alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ", "cntrl": "\\x00-\\x1f\\x7f",
          "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~",
          "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f"}


class PatternError(ValueError):
    pass


def translate(pattern: str) -> str:
    """A Go RE2 pattern as the Python re pattern that matches the same text (under re.ASCII). Raises
    PatternError naming what cannot be carried over."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = class_start = False
    lead = re.match(r"\(\?([a-zA-Z]+)\)", pattern)
    multiline_flag = bool(lead and "m" in lead.group(1))
    while i < n:
        c = pattern[i]
        if c == "\\":
            class_start = False
            if i + 1 >= n:
                raise PatternError("trailing backslash")
            d = pattern[i + 1]
            if d == "Q":  # \Q...\E: literal text
                end = pattern.find("\\E", i + 2)
                text = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
                out.append("".join("\\" + ch if not ch.isalnum() else ch for ch in text) if in_class
                           else re.escape(text))
                i = n if end < 0 else end + 2
                continue
            if d == "z":
                if in_class:
                    raise PatternError("\\z inside a character class")
                out.append("\\Z")
            elif d == "Z":
                raise PatternError("\\Z is not RE2 syntax (use \\z, or $)")
            elif d in "123456789":
                raise PatternError(f"\\{d}: RE2 has no backreferences (Python would read one)")
            elif d in "pP":
                raise PatternError(f"\\{d}: Unicode classes are not supported by Python's re")
            elif d == "C":
                raise PatternError("\\C (any byte) is not supported")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2:end] if end > 0 else ""
                negated = name.startswith("^")
                if end > 0 and name.lstrip("^") in _POSIX:
                    if negated:
                        raise PatternError(f"[[:{name}:]]: a negated POSIX class is not supported")
                    out.append(_POSIX[name])
                    class_start = False
                    i = end + 2
                    continue
                out.append("\\[")
                i += 1
                continue
            if c == "]" and not class_start:
                in_class = False
            class_start = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            class_start = True  # a "]" right after "[" or "[^" is a literal
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
                class_start = False
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2:]
            if rest.startswith("<") and not rest.startswith(("<=", "<!")):
                out.append("(?P<")
                i += 3
                continue
            if rest.startswith(("=", "!", "<=", "<!")):
                raise PatternError("lookaround is not RE2 syntax")
            if rest.startswith(">"):
                raise PatternError("atomic groups are not RE2 syntax")
            if rest.startswith(("P<", ":")):
                out.append(pattern[i:i + 2])
                i += 2
                continue
            m = re.match(r"([a-zA-Z-]*)(\)|:)", rest)
            if m is None:
                raise PatternError(f"unsupported group {pattern[i:i + 6]!r}")
            flags = m.group(1)
            if "U" in flags:
                raise PatternError("the (?U) flag (ungreedy) is not supported")
            if m.group(2) == ")" and i != 0:
                raise PatternError("flags must be at the start of the pattern here; use (?flags:...) instead")
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "$" and not multiline_flag:  # RE2: end of text; Python's $ also matches before a final newline
            out.append("\\Z")
            i += 1
            continue
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise PatternError("possessive repetition is not RE2 syntax")
        out.append(c)
        i += 1
    if in_class:
        raise PatternError("missing ]")
    return "".join(out)


_CROSSES_LINES = re.compile(r"\\n|\\s|\\D|\\W|\\S|\[\^|\(\?[a-zA-Z]*s|\\x0[aA]|\\x\{0*[aA]\}|\\012|\\v|\n")


def can_cross_lines(pattern: str) -> bool:
    """Whether the pattern could match a newline (and so span buffered lines). Conservative: "yes" costs
    only speed (the whole buffer is searched), "no" is said only when no construct in it matches \\n.
    \\S never matches a newline, but [^\\S...] could: any negated class counts."""
    return bool(_CROSSES_LINES.search(pattern.replace("\\\\", "")))


def compile_rule(pattern: str) -> tuple[re.Pattern, bool]:
    py = translate(pattern)
    lead = re.match(r"\(\?[a-zA-Z]+\)", py)  # Python takes global flags only at the very start
    flags, body = (lead.group(0), py[lead.end():]) if lead else ("", py)
    # A leading ".*" changes where a search's match starts, never whether there is one; searched from every
    # position it costs a scan of the rest of the line each time (NPD's CPER rules start so). Without "s" it
    # cannot cross a newline either, so dropping it keeps the result and saves the quadratic scan.
    while body.startswith(".*") and "s" not in flags and not body.startswith(".*?") and not body.startswith(".**"):
        body = body[2:]
    try:
        with warnings.catch_warnings():
            # re warns (FutureWarning) on constructs it will read differently later, e.g. "[[" in a class
            warnings.simplefilter("error")
            regex = re.compile(f"{flags}(?:{body})\\Z", re.ASCII)
    except (re.error, RecursionError, OverflowError, FutureWarning, DeprecationWarning) as e:
        raise PatternError(str(e)) from None
    # \S cannot match a newline; only a negated class or \s, \D, \W, \n can.
    return regex, can_cross_lines(py.replace("\\S", ""))


# -- Go durations ------------------------------------------------------------------------------------------
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """Seconds of a Go time.Duration string ("5m", "1h30m", "0"); None when it is not one."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    if text in ("0", "+0", "-0", ""):
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


# -- files -------------------------------------------------------------------------------------------------
def load_file(path: str | Path) -> RuleSet:
    """A rule file, validated; ConfigError naming the file and the key at fault."""
    name = str(path)
    text = read_text_file(path)
    check_json_depth(text, name)
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{name}: not valid JSON: {e}") from None
    return parse(raw, name)


def parse(raw: object, name: str) -> RuleSet:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected an object")
    _only(raw, TOP_KEYS, f"{name}: ")
    plugin = raw.get("plugin")
    if plugin not in (None, "", "kmsg"):
        raise ConfigError(f"{name}: plugin: {str(plugin)[:40]!r}: Vigil judges the kernel log only (plugin kmsg)")
    rs = RuleSet(name)
    size = raw.get("bufferSize", 10)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_BUFFER:
        raise ConfigError(f"{name}: bufferSize: must be an integer within 0..{MAX_BUFFER}, got {str(size)[:40]}")
    rs.buffer_size = size or 10  # NPD: 0 means its default, 10
    if raw.get("lookback") not in (None, ""):
        secs = go_duration(raw["lookback"])
        if secs is None or not 0 <= secs <= MAX_LOOKBACK:
            raise ConfigError(f"{name}: lookback: expected a Go duration such as \"5m\", got "
                              f"{str(raw['lookback'])[:40]!r}")
        rs.lookback = secs or None  # "0": no limit, as NPD
    skip = raw.get("skipList") or []
    if not isinstance(skip, list) or not all(isinstance(s, str) and s for s in skip):
        raise ConfigError(f"{name}: skipList: expected a list of non-empty strings")
    rs.skip = tuple(skip)
    conditions = raw.get("conditions") or []
    if not isinstance(conditions, list):
        raise ConfigError(f"{name}: conditions: expected a list")
    for i, c in enumerate(conditions):
        rs.conditions.append(_condition(c, f"{name}: conditions[{i}]"))
    types = [c.type for c in rs.conditions]
    dup = {t for t in types if types.count(t) > 1}
    if dup:
        raise ConfigError(f"{name}: conditions: {sorted(dup)[0]} is declared twice")
    rules = raw.get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError(f"{name}: rules: expected a list")
    if len(rules) > MAX_RULES:
        raise ConfigError(f"{name}: rules: at most {MAX_RULES} rules, got {len(rules)}")
    for i, r in enumerate(rules):
        rs.rules.append(_rule(r, f"{name}: rules[{i}]", set(types)))
    return rs


def _only(obj: dict, known: set[str], prefix: str) -> None:
    """Refuse the first key NPD's format does not define (a typo would silently disable a rule)."""
    for key in obj:
        if key not in known:
            raise ConfigError(f"{prefix}{str(key)[:80]}: unknown key (known: {', '.join(sorted(known))})")


def _text(obj: dict, key: str, where: str, required: bool = True, limit: int = 1024) -> str:
    v = obj.get(key)
    if v is None or v == "":
        if required:
            raise ConfigError(f"{where}.{key}: required")
        return ""
    if not isinstance(v, str) or len(v) > limit or "\x00" in v:
        raise ConfigError(f"{where}.{key}: expected a string of at most {limit} characters")
    return v


def _condition(c: object, where: str) -> Condition:
    if not isinstance(c, dict):
        raise ConfigError(f"{where}: expected an object")
    _only(c, CONDITION_KEYS, f"{where}.")
    ctype = _text(c, "type", where, limit=128)
    if not _NAME.fullmatch(ctype):
        raise ConfigError(f"{where}.type: {ctype[:80]!r}: expected a name (letters, digits, _)")
    severity = None
    extra = c.get("vigil")
    if extra is not None:
        if not isinstance(extra, dict) or set(extra) - {"severity"}:
            raise ConfigError(f"{where}.vigil: expected {{\"severity\": ...}}")
        severity = _severity(extra.get("severity"), f"{where}.vigil.severity")
    return Condition(ctype, _text(c, "reason", where, required=False, limit=128),
                     _text(c, "message", where, required=False), severity)


def _severity(v: object, where: str) -> str:
    if v not in SEVERITIES:
        raise ConfigError(f"{where}: must be one of {', '.join(SEVERITIES)}, got {str(v)[:40]!r}")
    return str(v)


def _rule(r: object, where: str, conditions: set[str]) -> Rule:
    if not isinstance(r, dict):
        raise ConfigError(f"{where}: expected an object")
    _only(r, RULE_KEYS, f"{where}.")
    rtype = r.get("type")
    if rtype not in (PERMANENT, TEMPORARY):
        raise ConfigError(f"{where}.type: must be permanent or temporary, got {str(rtype)[:40]!r}")
    reason = _text(r, "reason", where, limit=128)
    if not _NAME.fullmatch(reason):
        raise ConfigError(f"{where}.reason: {reason[:80]!r}: expected a name (letters, digits, _)")
    pattern = _text(r, "pattern", where, limit=MAX_PATTERN)
    condition = None
    if rtype == PERMANENT:
        condition = _text(r, "condition", where, limit=128)
        if condition not in conditions:
            raise ConfigError(f"{where}.condition: {condition[:80]} is not declared in conditions")
    try:
        regex, multiline = compile_rule(pattern)
    except PatternError as e:
        raise ConfigError(f"{where}.pattern: {e}") from None
    severity = _severity(r["severity"], f"{where}.severity") if "severity" in r else (
        "fatal" if rtype == PERMANENT else "warning")
    action = _text(r, "action", where, required=False, limit=256) or None
    return Rule(rtype, reason, pattern, regex, condition, severity, action, multiline, where)
