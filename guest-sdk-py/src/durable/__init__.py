"""Write durable-host workflows in Python.

A workflow is a function ``onboard(ctx, input)`` decorated with
:func:`workflow`, built into a WebAssembly component with ``durable-build
app.py -o app.wasm`` and run by ``durable-host run app.wasm``. Everything
that must not be repeated after a crash goes into ``ctx.step``: the host
checkpoints each step's result, and when a crashed workflow runs again from
the top, completed steps hand back their recorded result instead of running
a second time. Code between steps must therefore be deterministic.

    import durable

    @durable.workflow
    def checkout(ctx, order):
        payment = ctx.step("charge_card", charge, order["id"])
        ctx.step("send_receipt", email_receipt, payment)
        return {"payment_id": payment}
"""

from ._sdk import (
    CANCELLED,
    UNDECODABLE_SIGNAL,
    Branch,
    Cancelled,
    Context,
    PermanentError,
    RetryPolicy,
    StepError,
    StepRun,
    branch,
    current_step,
    from_dict,
    to_json,
    workflow,
)

__all__ = [
    "CANCELLED",
    "UNDECODABLE_SIGNAL",
    "Branch",
    "Cancelled",
    "Context",
    "PermanentError",
    "RetryPolicy",
    "StepError",
    "StepRun",
    "branch",
    "current_step",
    "from_dict",
    "to_json",
    "workflow",
]

#: The WIT contract this SDK targets.
CONTRACT = "durable:workflow@0.3.0"
