// The systems onboarding talks to, over HTTP: the same four services as the
// Rust example's, served by `mock-http` (the tests' HTTP service), which
// keeps every call and answers a repeated Idempotency-Key as it did the
// first time. A JavaScript component has no file system to write the Rust
// example's ledgers into, so its services are reached the way real ones are.

import { fetch } from 'durable-sdk';

/** Call `operation` of `service` with `request`, after the simulated latency. */
export async function call(
  base: string,
  service: string,
  operation: string,
  latencyMs: number,
  request: unknown,
): Promise<void> {
  if (latencyMs > 0) {
    await new Promise((done) => setTimeout(done, latencyMs));
  }
  const response = await fetch(`${base}/${service}/${operation}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(request),
  });
  if (!response.ok) {
    throw new Error(`the ${service} service answered ${response.status}`);
  }
}
