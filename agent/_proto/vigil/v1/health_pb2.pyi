from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_OK: _ClassVar[Status]
    STATUS_UNHEALTHY: _ClassVar[Status]
    STATUS_UNKNOWN: _ClassVar[Status]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_FATAL: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    KIND_STATE: _ClassVar[Kind]
    KIND_INFO: _ClassVar[Kind]
STATUS_UNSPECIFIED: Status
STATUS_OK: Status
STATUS_UNHEALTHY: Status
STATUS_UNKNOWN: Status
SEVERITY_UNSPECIFIED: Severity
SEVERITY_FATAL: Severity
SEVERITY_WARNING: Severity
SEVERITY_INFO: Severity
KIND_UNSPECIFIED: Kind
KIND_STATE: Kind
KIND_INFO: Kind

class AgentMessage(_message.Message):
    __slots__ = ("hello", "batch", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: Batch
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class AggregatorMessage(_message.Message):
    __slots__ = ("welcome", "ack", "validate")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ack: Ack
    validate: ValidateRequest
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., validate: _Optional[_Union[ValidateRequest, _Mapping]] = ...) -> None: ...

class Problem(_message.Message):
    __slots__ = ("check", "entity", "severity", "status", "message", "bus_id", "holders")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BUS_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    check: str
    entity: str
    severity: Severity
    status: Status
    message: str
    bus_id: str
    holders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, check: _Optional[str] = ..., entity: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., status: _Optional[_Union[Status, str]] = ..., message: _Optional[str] = ..., bus_id: _Optional[str] = ..., holders: _Optional[_Iterable[str]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "boot_id", "spool_epoch", "agent_version", "digest", "digest_seq", "handles_rejections", "handles_validation")
    NODE_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SPOOL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_SEQ_FIELD_NUMBER: _ClassVar[int]
    HANDLES_REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    HANDLES_VALIDATION_FIELD_NUMBER: _ClassVar[int]
    node: str
    boot_id: str
    spool_epoch: str
    agent_version: str
    digest: _containers.RepeatedCompositeFieldContainer[Problem]
    digest_seq: int
    handles_rejections: bool
    handles_validation: bool
    def __init__(self, node: _Optional[str] = ..., boot_id: _Optional[str] = ..., spool_epoch: _Optional[str] = ..., agent_version: _Optional[str] = ..., digest: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., digest_seq: _Optional[int] = ..., handles_rejections: _Optional[bool] = ..., handles_validation: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "kind", "check", "component", "entity", "status", "severity", "message", "action", "observed_at_unix_ms", "value", "threshold", "occurrences", "first_seen_unix_ms", "last_seen_unix_ms", "bus_id", "holders")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BUS_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: Kind
    check: str
    component: str
    entity: str
    status: Status
    severity: Severity
    message: str
    action: str
    observed_at_unix_ms: int
    value: str
    threshold: str
    occurrences: int
    first_seen_unix_ms: int
    last_seen_unix_ms: int
    bus_id: str
    holders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., check: _Optional[str] = ..., component: _Optional[str] = ..., entity: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., severity: _Optional[_Union[Severity, str]] = ..., message: _Optional[str] = ..., action: _Optional[str] = ..., observed_at_unix_ms: _Optional[int] = ..., value: _Optional[str] = ..., threshold: _Optional[str] = ..., occurrences: _Optional[int] = ..., first_seen_unix_ms: _Optional[int] = ..., last_seen_unix_ms: _Optional[int] = ..., bus_id: _Optional[str] = ..., holders: _Optional[_Iterable[str]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("boot_id", "events")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, boot_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("digest", "digest_seq")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_SEQ_FIELD_NUMBER: _ClassVar[int]
    digest: _containers.RepeatedCompositeFieldContainer[Problem]
    digest_seq: int
    def __init__(self, digest: _Optional[_Iterable[_Union[Problem, _Mapping]]] = ..., digest_seq: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("applied_seq", "heartbeat_seconds", "aggregator", "rejected", "max_message_bytes", "max_batch_events")
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    heartbeat_seconds: int
    aggregator: str
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    max_message_bytes: int
    max_batch_events: int
    def __init__(self, applied_seq: _Optional[int] = ..., heartbeat_seconds: _Optional[int] = ..., aggregator: _Optional[str] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., max_batch_events: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "rejected")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, seq: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("seq", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    reason: str
    def __init__(self, seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("request_id", "probes", "level", "quarantined", "timeout_seconds")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    probes: _containers.RepeatedScalarFieldContainer[str]
    level: str
    quarantined: bool
    timeout_seconds: int
    def __init__(self, request_id: _Optional[str] = ..., probes: _Optional[_Iterable[str]] = ..., level: _Optional[str] = ..., quarantined: _Optional[bool] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...
