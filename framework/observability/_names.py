"""The names every signal uses, pinned here (the OpenTelemetry messaging conventions are still
"Development" status, so they may be renamed upstream; a test holds these to the values below).
"""

from __future__ import annotations

__all__ = [
    "ATTRIBUTES",
    "METRICS",
    "SPAN_NAMES",
]

# -- span attributes: OpenTelemetry semantic conventions (messaging, Kafka, HTTP, errors) -------

MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging.destination.partition.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
MESSAGING_KAFKA_MESSAGE_KEY = "messaging.kafka.message.key"
MESSAGING_KAFKA_OFFSET = "messaging.kafka.offset"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_MESSAGE_ID = "messaging.message.id"
ERROR_TYPE = "error.type"
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
URL_PATH = "url.path"
ENDUSER_ID = "enduser.id"

# -- span and metric attributes of keel's own --------------------------------------------------

KEEL_COMMAND = "keel.command"
KEEL_COMMAND_ID = "keel.command.id"
KEEL_CORRELATION_ID = "keel.correlation_id"
KEEL_CAUSATION_ID = "keel.causation_id"
KEEL_AGGREGATE_ID = "keel.aggregate.id"
KEEL_AGGREGATE_VERSION = "keel.aggregate.version"
KEEL_OUTCOME = "keel.outcome"
KEEL_PROJECTION = "keel.projection"
KEEL_PARTITION = "keel.partition"
KEEL_SHARD = "keel.shard"
KEEL_OFFSET_FIRST = "keel.offset.first"
KEEL_OFFSET_LAST = "keel.offset.last"
KEEL_PROCESS = "keel.process"
KEEL_DEADLINE = "keel.deadline"
KEEL_SOURCE = "keel.source"

MESSAGING_SYSTEM_KAFKA = "kafka"

# Metric attributes are short: they become Prometheus labels.
COMMAND = "command"
OUTCOME = "outcome"
PROJECTION = "projection"
PARTITION = "partition"
SHARD = "shard"
STREAM = "stream"
ACTION = "action"
APP = "app"
FEED = "feed"
PROCESS = "process"

ATTRIBUTES = {
    name: value
    for name, value in sorted(globals().items())
    if name.isupper() and isinstance(value, str) and name not in ("MESSAGING_SYSTEM_KAFKA",)
}
"""Every attribute name above, by constant name (for the pinning test and the README)."""

# -- span names (``{operation} {destination}``, as the messaging conventions name them) --------

SPAN_COMMAND = "command {command}"
SPAN_SEND = "send {topic}"
SPAN_PROCESS = "process {topic}"
SPAN_REBUILD = "rebuild {projection}"
SPAN_DEADLINE = "deadline {name}"
SPAN_CDC = "process {source}"

SPAN_NAMES = {
    "command": SPAN_COMMAND,
    "send": SPAN_SEND,
    "process": SPAN_PROCESS,
    "rebuild": SPAN_REBUILD,
    "deadline": SPAN_DEADLINE,
    "cdc": SPAN_CDC,
}

# -- metric names (prefix ``keel.``; Prometheus shows dots as underscores) ---------------------

COMMAND_DURATION = "keel.command.duration"
COMMAND_CONFLICTS = "keel.command.conflicts"
COMMAND_REJECTED = "keel.command.rejected"
STORE_APPEND_EVENTS = "keel.store.append.events"
STORE_TXN_DURATION = "keel.store.txn.duration"
WRITER_TRANSACTIONS = "keel.writer.transactions"
WRITER_FENCED = "keel.writer.fenced"
WRITER_RETRIES = "keel.writer.retries"
WRITER_SHARDS = "keel.writer.shards"
PROJECTION_LAG = "keel.projection.lag"
PROJECTION_LAG_SECONDS = "keel.projection.lag.seconds"
PROJECTION_EVENTS = "keel.projection.events"
PROJECTION_BATCH_SIZE = "keel.projection.batch.size"
PROCESS_DURATION = "messaging.process.duration"
PROJECTION_DEAD_LETTERS = "keel.projection.dead_letters"
WINDOW_LATE_EVENTS = "keel.window.late_events"
WINDOW_OPEN = "keel.window.open"
WATERMARK_LAG_SECONDS = "keel.watermark.lag.seconds"
PROCESS_ACTIVE = "keel.process.active"
PROCESS_DEADLINES_OVERDUE = "keel.process.deadlines.overdue"
PROCESS_DEAD_LETTERS = "keel.process.dead_letters"
PROCESS_OUTCOMES = "keel.process.outcomes"
CDC_SOURCE_LAG = "keel.cdc.source_lag"
CDC_SOURCE_LAG_SECONDS = "keel.cdc.source_lag.seconds"
CDC_COMMANDS = "keel.cdc.commands"
CDC_DEAD_LETTERS = "keel.cdc.dead_letters"

METRICS = {
    COMMAND_DURATION: ("histogram", "s", "Time to execute a command, by command and outcome"),
    COMMAND_CONFLICTS: ("counter", "1", "Version conflicts met (each one retried)"),
    COMMAND_REJECTED: ("counter", "1", "Commands refused, by command and outcome"),
    STORE_APPEND_EVENTS: ("counter", "1", "Events appended to the store"),
    STORE_TXN_DURATION: ("histogram", "s", "Time of one store append (a Kafka transaction)"),
    WRITER_TRANSACTIONS: ("counter", "1", "Transactions a shard owner committed"),
    WRITER_FENCED: ("counter", "1", "Transactions of a shard owner that were fenced"),
    WRITER_RETRIES: ("counter", "1", "Batches a shard owner decided again"),
    WRITER_SHARDS: ("gauge", "1", "Writer shards this process owns"),
    PROJECTION_LAG: ("gauge", "1", "Events between a projection's position and the head"),
    PROJECTION_LAG_SECONDS: ("gauge", "s", "Age of the oldest event a projection has not applied"),
    PROJECTION_EVENTS: ("counter", "1", "Events a projection worker processed, by outcome"),
    PROJECTION_BATCH_SIZE: ("histogram", "1", "Events per applied batch"),
    PROCESS_DURATION: ("histogram", "s", "Time to apply one batch (messaging semconv)"),
    PROJECTION_DEAD_LETTERS: ("gauge", "1", "Dead letters parked for a projection"),
    WINDOW_LATE_EVENTS: ("counter", "1", "Events later than their window's grace, by action"),
    WINDOW_OPEN: ("gauge", "1", "Windows open (not yet closed by the watermark)"),
    WATERMARK_LAG_SECONDS: ("gauge", "s", "Wall clock minus a streaming projection's watermark"),
    PROCESS_ACTIVE: ("gauge", "1", "Process-manager instances not yet finished"),
    PROCESS_DEADLINES_OVERDUE: ("gauge", "1", "Process-manager deadlines past due"),
    PROCESS_DEAD_LETTERS: ("gauge", "1", "Parked process-manager inputs and deadlines"),
    PROCESS_OUTCOMES: (
        "counter",
        "1",
        "Process-manager inputs and deadlines that were no-ops, skipped or parked, by outcome",
    ),
    CDC_SOURCE_LAG: ("gauge", "1", "Changes in a CDC feed's source past the feed's cursor"),
    CDC_SOURCE_LAG_SECONDS: ("gauge", "s", "Age of the oldest change a CDC feed has not done"),
    CDC_COMMANDS: ("counter", "1", "Commands a CDC feed issued (each outcome durable)"),
    CDC_DEAD_LETTERS: ("counter", "1", "Changes a CDC feed parked, by outcome (refused or held)"),
}
"""Every instrument: name -> (kind, unit, description)."""

# Outcomes (attribute ``outcome``).
OK = "ok"
REPLAYED = "replayed"
CONFLICT = "conflict"
REJECTED = "rejected"
ERROR = "error"
APPLIED = "applied"
SKIPPED_UNHANDLED = "skipped_unhandled"
DUPLICATE = "duplicate"
DEAD_LETTERED = "dead_lettered"
HELD = "held"
