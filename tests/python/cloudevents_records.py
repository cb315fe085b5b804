"""Kafka records written by the CloudEvents Python SDK (`cloudevents` on PyPI), for the
lenient-reading tests: the SDK decides the bytes, the Rust test only carries them to the
broker.

Usage: cloudevents_records.py RUN
Prints one JSON object per line: {"name", "headers": [[name, hex value]], "key": hex
or null, "value": hex}. RUN is put into every event's data, so a test finds its own.

"minimal" events carry only the four attributes CloudEvents requires (specversion, id,
source, type): the SDK adds `time` when it builds an event, so it is taken out again
before the SDK writes the record.
"""

import json
import sys
import uuid

from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


def event(event_type, event_id, data, minimal):
    attributes = {"type": event_type, "source": "python-sdk", "id": event_id,
                  "specversion": "1.0"}
    built = CloudEvent(attributes=attributes, data=data)
    if minimal:
        built._attributes.pop("time", None)
    return built


def emit(name, message, extra=None):
    hexed = lambda b: b.hex() if b is not None else None
    key = message.key.encode() if isinstance(message.key, str) else message.key
    line = {"name": name,
            "headers": [[k, hexed(v)] for k, v in message.headers.items()],
            "key": hexed(key), "value": hexed(message.value)}
    line.update(extra or {})
    print(json.dumps(line))


def main():
    run = sys.argv[1]
    fmt = JSONFormat()
    created = {"userId": f"u-{run}", "email": "sdk@example.com", "run": run}
    deleted = {"userId": f"u-{run}", "run": run}
    default_id = str(uuid.uuid4())
    full = event("UserCreatedEvent", default_id, created, minimal=False)
    emit("sdk-binary", kafka.to_binary(full, fmt),
         {"id": default_id, "time": full.get_time().isoformat()})
    emit("sdk-binary-minimal",
         kafka.to_binary(event("UserDeletedEvent", f"abc-{run}", deleted, minimal=True), fmt),
         {"id": f"abc-{run}"})
    structured_id = str(uuid.uuid4())
    full = event("UserCreatedEvent", structured_id, created, minimal=False)
    emit("sdk-structured", kafka.to_structured(full, fmt),
         {"id": structured_id, "time": full.get_time().isoformat()})
    emit("sdk-structured-minimal",
         kafka.to_structured(event("UserDeletedEvent", f"xyz-{run}", deleted, minimal=True), fmt),
         {"id": f"xyz-{run}"})


if __name__ == "__main__":
    main()
