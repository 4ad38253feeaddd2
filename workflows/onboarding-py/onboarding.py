"""Employee onboarding, the showcase workflow, in Python.

``create_record``, then ``provision_laptop`` and ``provision_access`` in
parallel, then ``send_welcome_email``: the same steps, input and output as
the Rust version (workflows/onboarding). Each step calls a mock service; kill
the host at any point and run the same workflow id again: finished steps are
not repeated and the summary comes out the same.

Build: ``durable-build onboarding.py -o onboarding-py.wasm``.
"""

from dataclasses import dataclass

import durable
import mock_services as services


@dataclass
class Employee:
    id: str
    name: str
    email: str
    role: str
    # Latency each mock service call simulates, to watch (or kill) a slow run.
    service_latency_ms: int = 0


@durable.workflow
def onboard(ctx: durable.Context, employee: Employee) -> dict:
    record_id = ctx.step("create_record", create_record, employee)

    # Two independent provisioning steps: the host runs them at the same time,
    # each in its own instance of this component.
    laptop, access_groups = ctx.parallel(
        [
            (provision_laptop, employee),
            (provision_access, employee),
        ]
    )

    welcome_email_id = ctx.step(
        "send_welcome_email", send_welcome_email, employee, laptop, access_groups
    )

    return {
        "employee_id": employee.id,
        "record_id": record_id,
        "laptop": laptop,
        "access_groups": access_groups,
        "welcome_email_id": welcome_email_id,
    }


def create_record(employee: Employee) -> str:
    record_id = f"HR-{employee.id}"
    services.call(
        "hr",
        "create_record",
        employee.service_latency_ms,
        [record_id, employee.name, employee.email],
    )
    return record_id


def send_welcome_email(employee: Employee, laptop: dict, access_groups: list) -> str:
    message_id = f"MAIL-{employee.id}"
    body = (
        f"Welcome, {employee.name}! Your laptop {laptop['asset_tag']} is ready; "
        f"you have access to {', '.join(access_groups)}."
    )
    services.call(
        "mail",
        "send_welcome_email",
        employee.service_latency_ms,
        [message_id, employee.email, body],
    )
    return message_id


# Branch bodies get their arguments as JSON (the employee as a dict).


@durable.branch("provision_laptop")
def provision_laptop(employee: dict) -> dict:
    employee = durable.from_dict(Employee, employee)
    laptop = {"asset_tag": f"LT-{employee.id}", "model": laptop_model(employee.role)}
    services.call("it", "provision_laptop", employee.service_latency_ms, laptop)
    return laptop


@durable.branch("provision_access")
def provision_access(employee: dict) -> list:
    employee = durable.from_dict(Employee, employee)
    groups = access_groups(employee.role)
    services.call("iam", "provision_access", employee.service_latency_ms, [employee.email, groups])
    return groups


def laptop_model(role: str) -> str:
    return {"engineer": "ThinkPad P16", "designer": "MacBook Pro 16"}.get(role, "ThinkPad T14")


def access_groups(role: str) -> list:
    groups = ["all-staff", "sso"]
    if role == "engineer":
        groups += ["github", "ci"]
    elif role == "designer":
        groups.append("figma")
    return groups
