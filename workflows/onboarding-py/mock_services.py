"""File-backed stand-ins for the systems the onboarding workflow talks to.

The same ledger as the Rust ``mock-services`` crate: each service is a
directory under the guest directory ``/services`` (grant it with ``--dir
<host dir>::/services``) and every call leaves one JSON file there, written
to a ``.partial`` file first and published with an atomic rename, so a host
killed mid-call leaves the whole record or none. The directories show
exactly how many times each side effect really ran.
"""

import os
import time

import durable

SERVICES_DIR = "/services"


def call(service: str, operation: str, latency_ms: int, request) -> None:
    """Record ``request`` in the ledger of ``service``, after the simulated latency."""
    if latency_ms > 0:
        time.sleep(latency_ms / 1000)
    if not os.path.isdir(SERVICES_DIR):
        raise durable.StepError(
            f"the mock services directory {SERVICES_DIR} is not available: "
            f"run with --dir <host dir>::{SERVICES_DIR}"
        )
    step = durable.current_step()
    line = durable.to_json(
        {
            "operation": operation,
            "idempotency_key": step.idempotency_key if step else None,
            "attempt": step.attempt if step else None,
            "request": request,
        }
    )
    service_dir = os.path.join(SERVICES_DIR, service)
    # os.urandom asks the host at call time; Python's `random` would be
    # seeded once, when the component was built.
    record = os.path.join(service_dir, f"{os.urandom(8).hex()}.json")
    partial = record[: -len(".json")] + ".partial"
    try:
        os.makedirs(service_dir, exist_ok=True)
        with open(partial, "w") as file:
            file.write(line)
        os.rename(partial, record)
    except OSError as e:
        raise durable.StepError(f"the {service} service failed: {e}") from None
