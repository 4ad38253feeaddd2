//! Checkout, calling real services over HTTP.
//!
//! `charge` the card at the payments service, `ship` the order, then
//! `email_receipt`: each a step that POSTs to `{services}/...`, which the
//! workflow must be granted (`--allow-http 127.0.0.1:8088`). A completed
//! step is never called again; a step cut short by a crash is, with the same
//! `Idempotency-Key`, so a service that honours it (as `mock-http` does)
//! answers the repeat without charging twice.

use std::time::Duration;

use durable_sdk::{Context, Error, RetryPolicy, http};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Order {
    order_id: String,
    amount_cents: u64,
    email: String,
    /// Where the services answer, e.g. `http://127.0.0.1:8088`.
    services: String,
}

/// What the services answer: the id of what they made.
#[derive(Debug, Serialize, Deserialize)]
struct Created {
    id: String,
}

#[derive(Debug, Serialize)]
struct Receipt {
    order_id: String,
    charge_id: String,
    shipment_id: String,
    receipt_email_id: String,
}

fn checkout(ctx: &Context, order: Order) -> Result<Receipt, Error> {
    // A payments service that is briefly down is tried again; a declined
    // card (a 4xx answer) is not.
    let retry =
        RetryPolicy::attempts(4).backoff(Duration::from_millis(200), Duration::from_secs(5));
    let charge: Created = ctx.step_with_retry("charge", &retry, || {
        post(
            &order.services,
            "/payments/charges",
            json!({ "order": order.order_id, "amount_cents": order.amount_cents }),
        )
    })?;
    let shipment: Created = ctx.step("ship", || {
        post(
            &order.services,
            "/shipping/shipments",
            json!({ "order": order.order_id }),
        )
    })?;
    let email: Created = ctx.step("email_receipt", || {
        post(
            &order.services,
            "/email/messages",
            json!({ "to": order.email, "charge": charge.id }),
        )
    })?;
    Ok(Receipt {
        order_id: order.order_id,
        charge_id: charge.id,
        shipment_id: shipment.id,
        receipt_email_id: email.id,
    })
}

/// POST `body` to `services` + `path` and read what it created.
fn post(services: &str, path: &str, body: serde_json::Value) -> Result<Created, Error> {
    http::post(&format!("{services}{path}"))
        .json(&body)?
        .send()?
        .error_for_status()?
        .json()
}

durable_sdk::workflow!(checkout);
