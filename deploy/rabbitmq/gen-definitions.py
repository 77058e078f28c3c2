#!/usr/bin/env python3
"""The one place that says which RabbitMQ users exist and what each may touch.

    python3 deploy/rabbitmq/gen-definitions.py            # rewrite definitions.json beside this file
    python3 deploy/rabbitmq/gen-definitions.py --check    # exit 1 if definitions.json differs
    python3 deploy/rabbitmq/gen-definitions.py --plan     # TSV for scripts/setup:
                                                          #   user password tags configure write read
    python3 deploy/rabbitmq/gen-definitions.py --topology # exchanges/queues/bindings JSON for
                                                          #   `rabbitmqctl import_definitions`

The topology (no namespace, 4 partitions, delivery limit 5: the services' defaults) is declared
up front so that an event published before a consumer service ever started is still queued for
it; each service declares the same topology again at start (idempotent).

Passwords are the development defaults of the contract (user name = password, guest/guest).
Hashes use rabbit_password_hashing_sha256: base64(salt4 + sha256(salt4 + utf8(password))).
An existing hash that still verifies is kept, so regenerating does not churn the file.
"""

import base64
import hashlib
import json
import os
import sys

VHOST = "eventbank"
CONSUMERS = ["account", "email", "interest", "compliance"]
NS = r"^([a-z0-9_-]+\.)?"
HASHING = "rabbit_password_hashing_sha256"
HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "definitions.json")


def users():
    """(name, password, tags, configure, write, read) in a stable order."""
    out = [
        ("eventbank_deposit", "eventbank_deposit", [],
         NS + r"(bank\.events)$", NS + r"(bank\.events)$", "^$"),
    ]
    for x in CONSUMERS:
        out.append((
            f"eventbank_{x}", f"eventbank_{x}", [],
            NS + rf"(bank\.events|{x}\.deposits(\..*)?)$",
            NS + rf"({x}\.deposits(\..*)?)$",
            NS + rf"(bank\.events|{x}\.deposits(\..*)?)$",
        ))
    out.append(("eventbank_ops", "eventbank_ops", ["management"], ".*", ".*", ".*"))
    # The image creates no default user when definitions load at boot; the tests use guest.
    out.append(("guest", "guest", ["administrator"], ".*", ".*", ".*"))
    return out


PARTITIONS = 4
DELIVERY_LIMIT = 5


def topology():
    """Exchanges, queues and bindings exactly as shared/runtime/src/amqp.rs declares them."""
    exchanges = [{"name": "bank.events", "vhost": VHOST, "type": "topic", "durable": True,
                  "auto_delete": False, "internal": False, "arguments": {}}]
    queues, bindings = [], []
    for x in CONSUMERS:
        hashx, dlx, dlq = f"{x}.deposits", f"{x}.deposits.dlx", f"{x}.deposits.dlq"
        exchanges.append({"name": hashx, "vhost": VHOST, "type": "x-consistent-hash", "durable": True,
                          "auto_delete": False, "internal": False,
                          "arguments": {"hash-header": "account_id"}})
        exchanges.append({"name": dlx, "vhost": VHOST, "type": "fanout", "durable": True,
                          "auto_delete": False, "internal": False, "arguments": {}})
        bindings.append({"source": "bank.events", "vhost": VHOST, "destination": hashx,
                         "destination_type": "exchange", "routing_key": "deposit.completed",
                         "arguments": {}})
        queues.append({"name": dlq, "vhost": VHOST, "durable": True, "auto_delete": False,
                       "arguments": {"x-queue-type": "quorum"}})
        bindings.append({"source": dlx, "vhost": VHOST, "destination": dlq,
                         "destination_type": "queue", "routing_key": "", "arguments": {}})
        for i in range(PARTITIONS):
            q = f"{x}.deposits.{i}"
            queues.append({"name": q, "vhost": VHOST, "durable": True, "auto_delete": False,
                           "arguments": {"x-queue-type": "quorum", "x-single-active-consumer": True,
                                         "x-delivery-limit": DELIVERY_LIMIT,
                                         "x-dead-letter-exchange": dlx}})
            bindings.append({"source": hashx, "vhost": VHOST, "destination": q,
                             "destination_type": "queue", "routing_key": "1", "arguments": {}})
    return {"exchanges": exchanges, "queues": queues, "bindings": bindings}


def hash_password(password, salt=None):
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode()


def verify(password_hash, password):
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except Exception:
        return False
    return len(raw) == 36 and hash_password(password, raw[:4]) == password_hash


def build(existing):
    old = {u.get("name"): u.get("password_hash", "") for u in existing.get("users", [])}
    defs = {"vhosts": [{"name": VHOST}], "users": [], "permissions": []}
    for name, password, tags, conf, write, read in users():
        h = old.get(name, "")
        defs["users"].append({
            "name": name,
            "password_hash": h if verify(h, password) else hash_password(password),
            "hashing_algorithm": HASHING,
            "tags": tags,
            "limits": {},
        })
        defs["permissions"].append(
            {"user": name, "vhost": VHOST, "configure": conf, "write": write, "read": read})
    defs.update(topology())
    return defs


def render(defs):
    return json.dumps(defs, indent=2) + "\n"


def load():
    try:
        with open(TARGET, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def main(argv):
    if argv[1:] == ["--plan"]:
        for name, password, tags, conf, write, read in users():
            print("\t".join([name, password, ",".join(tags) or "-", conf, write, read]))
        return 0
    if argv[1:] == ["--topology"]:
        print(json.dumps(topology(), indent=2))
        return 0
    existing = load()
    text = render(build(existing))
    if argv[1:] == ["--check"]:
        if existing and render(existing) == text:
            return 0
        print(f"{TARGET} is out of date: run python3 {os.path.relpath(__file__)}", file=sys.stderr)
        return 1
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
