//! Employee onboarding, the showcase workflow.
//!
//! `create_record`, then `provision_laptop` and `provision_access` in
//! parallel, then `send_welcome_email`. Each step calls a mock service (the
//! `mock-services` crate); kill the host at any point and run the same
//! workflow id again: finished steps are not repeated and the summary comes
//! out the same.

use durable_sdk::{Branch, Context, Error};
use mock_services as services;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Employee {
    id: String,
    name: String,
    email: String,
    role: String,
    /// Latency each mock service call simulates, to watch (or kill) a slow run.
    #[serde(default)]
    service_latency_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Laptop {
    asset_tag: String,
    model: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    employee_id: String,
    record_id: String,
    laptop: Laptop,
    access_groups: Vec<String>,
    welcome_email_id: String,
}

fn onboard(ctx: &Context, employee: Employee) -> Result<Summary, Error> {
    let latency = employee.service_latency_ms;

    let record_id: String = ctx.step("create_record", || {
        let record_id = format!("HR-{}", employee.id);
        services::call(
            "hr",
            "create_record",
            latency,
            (&record_id, &employee.name, &employee.email),
        )?;
        Ok(record_id)
    })?;

    // Two independent provisioning steps: the host runs them at the same time.
    let (laptop, access_groups) = ctx.join(
        Branch::new("provision_laptop", provision_laptop, &employee),
        Branch::new("provision_access", provision_access, &employee),
    );
    let (laptop, access_groups) = (laptop?, access_groups?);

    let welcome_email_id: String = ctx.step("send_welcome_email", || {
        let message_id = format!("MAIL-{}", employee.id);
        let body = format!(
            "Welcome, {}! Your laptop {} is ready; you have access to {}.",
            employee.name,
            laptop.asset_tag,
            access_groups.join(", ")
        );
        services::call(
            "mail",
            "send_welcome_email",
            latency,
            (&message_id, &employee.email, body),
        )?;
        Ok(message_id)
    })?;

    Ok(Summary {
        employee_id: employee.id,
        record_id,
        laptop,
        access_groups,
        welcome_email_id,
    })
}

fn provision_laptop(employee: Employee) -> Result<Laptop, Error> {
    let laptop = Laptop {
        asset_tag: format!("LT-{}", employee.id),
        model: laptop_model(&employee.role).to_owned(),
    };
    services::call(
        "it",
        "provision_laptop",
        employee.service_latency_ms,
        &laptop,
    )?;
    Ok(laptop)
}

fn provision_access(employee: Employee) -> Result<Vec<String>, Error> {
    let groups = access_groups(&employee.role);
    services::call(
        "iam",
        "provision_access",
        employee.service_latency_ms,
        (&employee.email, &groups),
    )?;
    Ok(groups)
}

fn laptop_model(role: &str) -> &'static str {
    match role {
        "engineer" => "ThinkPad P16",
        "designer" => "MacBook Pro 16",
        _ => "ThinkPad T14",
    }
}

fn access_groups(role: &str) -> Vec<String> {
    let mut groups = vec!["all-staff".to_owned(), "sso".to_owned()];
    match role {
        "engineer" => groups.extend(["github".to_owned(), "ci".to_owned()]),
        "designer" => groups.push("figma".to_owned()),
        _ => {}
    }
    groups
}

durable_sdk::workflow!(onboard);
