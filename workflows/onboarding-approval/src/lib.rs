//! Onboarding with approval: the laptop is provisioned only once the new
//! employee's manager approves it.
//!
//! `create_record`, then the workflow publishes its status (an event) and
//! waits for the signal `laptop_approval` (`{"approved": true, "by": ...}`).
//! If nobody answers within `approval_timeout_ms` (three days by default),
//! `escalate` asks the manager's manager and the wait starts again, once.
//! Then `provision_laptop` (only if approved), `provision_access` and
//! `send_welcome_email`. While it waits, no process holds it: `durable-host
//! run` returns with the workflow `waiting`, and `serve` resumes it when the
//! signal comes.

use std::time::Duration;

use durable_sdk::{Context, Error, UNDECODABLE_SIGNAL};
use mock_services as services;
use serde::{Deserialize, Serialize};

/// Three days, unless the input says otherwise.
const DEFAULT_APPROVAL_TIMEOUT_MS: u64 = 3 * 24 * 3600 * 1000;

#[derive(Debug, Serialize, Deserialize)]
struct Employee {
    id: String,
    name: String,
    email: String,
    manager: String,
    /// How long the manager has to answer before it is escalated.
    #[serde(default = "default_timeout")]
    approval_timeout_ms: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_APPROVAL_TIMEOUT_MS
}

/// The manager's answer, sent as the signal `laptop_approval`.
#[derive(Debug, Serialize, Deserialize)]
struct Approval {
    approved: bool,
    by: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    employee_id: String,
    record_id: String,
    approval: Option<Approval>,
    escalated: bool,
    laptop: Option<String>,
    access_groups: Vec<String>,
    welcome_email_id: String,
}

fn onboard(ctx: &Context, employee: Employee) -> Result<Summary, Error> {
    let record_id: String = ctx.step("create_record", || {
        let record_id = format!("HR-{}", employee.id);
        services::call("hr", "create_record", 0, (&record_id, &employee.name))?;
        Ok(record_id)
    })?;

    ctx.set_event(
        "status",
        &format!("waiting for {} to approve the laptop", employee.manager),
    )?;
    let timeout = Some(Duration::from_millis(employee.approval_timeout_ms));
    let mut approval = wait_for_approval(ctx, timeout)?;
    let escalated = approval.is_none();
    if escalated {
        ctx.step("escalate", || {
            services::call(
                "mail",
                "escalate",
                0,
                (
                    &employee.manager,
                    "no answer on a laptop approval",
                    &employee.id,
                ),
            )
        })?;
        ctx.set_event("status", "escalated: waiting for the manager's manager")?;
        approval = wait_for_approval(ctx, timeout)?;
    }

    let approved = approval.as_ref().is_some_and(|a| a.approved);
    let laptop = if approved {
        ctx.set_event("status", "approved: provisioning the laptop")?;
        Some(ctx.step("provision_laptop", || {
            let asset_tag = format!("LT-{}", employee.id);
            services::call("it", "provision_laptop", 0, &asset_tag)?;
            Ok(asset_tag)
        })?)
    } else {
        ctx.set_event("status", "no laptop: not approved")?;
        None
    };

    let access_groups: Vec<String> = ctx.step("provision_access", || {
        let groups = vec!["all-staff".to_owned(), "sso".to_owned()];
        services::call("iam", "provision_access", 0, (&employee.email, &groups))?;
        Ok(groups)
    })?;

    let welcome_email_id: String = ctx.step("send_welcome_email", || {
        let message_id = format!("MAIL-{}", employee.id);
        let laptop_line = match &laptop {
            Some(tag) => format!("your laptop {tag} is ready"),
            None => "your laptop request was not approved".to_owned(),
        };
        services::call(
            "mail",
            "send_welcome_email",
            0,
            (
                &message_id,
                &employee.email,
                format!("Welcome, {}; {laptop_line}.", employee.name),
            ),
        )?;
        Ok(message_id)
    })?;
    ctx.set_event("status", "done")?;

    Ok(Summary {
        employee_id: employee.id,
        record_id,
        approval,
        escalated,
        laptop,
        access_groups,
        welcome_email_id,
    })
}

/// The manager's answer, or `None` when nobody answered within `timeout`.
/// An answer that does not read as an [`Approval`] is logged and skipped.
fn wait_for_approval(ctx: &Context, timeout: Option<Duration>) -> Result<Option<Approval>, Error> {
    loop {
        match ctx.wait_signal("laptop_approval", timeout) {
            Err(e) if e.code() == Some(UNDECODABLE_SIGNAL) => ctx.log(format!("skipped: {e}")),
            answer => return answer,
        }
    }
}

durable_sdk::workflow!(onboard);
