// durable-sdk: durable-host workflows in JavaScript and TypeScript.
//
// A workflow is an async function `(ctx, input) => output`, the default
// export of the module `durable-build` turns into a component. Everything
// that must not run twice goes through `ctx`: the host records each step's
// result, and a workflow run again after a crash is replayed from the top,
// recorded steps handing back their results instead of running.
//
// This module owns the translation between JavaScript and the contract's
// WIT (`durable:workflow/durable-step`): JSON values, errors as
// `{ message, code }`, bigint milliseconds, and the `run` / `runBranch`
// exports. It knows nothing of how the component is built.

import * as host from 'durable:workflow/durable-step@0.3.0';

/** The code of an error that tells of a cancellation. */
export const CANCELLED = 'cancelled';

/**
 * An error a step or a workflow ends with: a message and, optionally, a
 * short stable code a caller can match on (`card_declined`). Both are
 * recorded and a replay throws the same again.
 */
export class DurableError extends Error {
  constructor(message, options = {}) {
    super(message);
    this.name = 'DurableError';
    this.code = options.code;
    this.permanent = Boolean(options.permanent);
  }
}

/** An error retrying cannot fix: a step fails with it at once, whatever its retry policy. */
export class PermanentError extends DurableError {
  constructor(message, options = {}) {
    super(message, { ...options, permanent: true });
    this.name = 'PermanentError';
  }
}

/**
 * The workflow was cancelled (`durable-host cancel`): the step, sleep or wait
 * that threw this did not run. The workflow may still run steps that undo
 * its work within the host's grace period; it ends `cancelled` whatever it
 * returns.
 */
export class CancelledError extends DurableError {
  constructor(reason) {
    super(reason, { code: CANCELLED, permanent: true });
    this.name = 'CancelledError';
  }
}

/** Retry up to `maxAttempts` in all, backing off from 100 ms, doubling, to 30 s, unless told otherwise. */
const DEFAULT_RETRY = { maxAttempts: 1, initialBackoffMs: 100, maxBackoffMs: 30_000, multiplier: 2 };

function retryPolicy(policy) {
  const given = Object.entries(policy ?? {}).filter(([, value]) => value !== undefined);
  const full = { ...DEFAULT_RETRY, ...Object.fromEntries(given) };
  if (!Number.isInteger(full.maxAttempts) || full.maxAttempts < 1) {
    throw new TypeError(`retry.maxAttempts must be a whole number of at least 1, not ${full.maxAttempts}`);
  }
  for (const field of ['initialBackoffMs', 'maxBackoffMs', 'multiplier']) {
    if (typeof full[field] !== 'number' || !Number.isFinite(full[field]) || full[field] < 0) {
      throw new TypeError(`retry.${field} must be a number of at least 0, not ${full[field]}`);
    }
  }
  full.initialBackoffMs = Math.round(full.initialBackoffMs);
  full.maxBackoffMs = Math.round(full.maxBackoffMs);
  return full;
}

/** The wait before attempt `attempt` (2 is the first retry). */
function backoffBefore(policy, attempt) {
  const retries = Math.min(Math.max(attempt - 2, 0), 64);
  const wait = policy.initialBackoffMs * Math.max(policy.multiplier, 1) ** retries;
  return Math.round(Math.min(wait, policy.maxBackoffMs));
}

function millis(ms, what) {
  if (typeof ms !== 'number' || !(ms >= 0)) {
    throw new TypeError(`${what} must be a number of milliseconds, not ${ms}`);
  }
  return BigInt(Math.min(Math.round(ms), Number.MAX_SAFE_INTEGER));
}

// The step whose body is executing (one at a time: the host refuses a
// second), and how many HTTP requests its attempt has made.
let current;
let requests = 0;

async function withCurrentStep(run, body) {
  current = Object.freeze({
    key: run.key,
    attempt: run.attempt,
    failures: run.failures,
    idempotencyKey: run.idempotencyKey,
  });
  requests = 0;
  try {
    return await body();
  } finally {
    current = undefined;
  }
}

/**
 * The step being executed: `{ key, attempt, failures, idempotencyKey }`, or
 * `undefined` outside a step body (and while a step is replayed, as its
 * body does not run). Hand `idempotencyKey` to the services a step calls so
 * that a repeated attempt is recognised as a duplicate.
 */
export function currentStep() {
  return current;
}

/** An error as the contract records it. */
function toHost(error) {
  if (error instanceof DurableError) {
    return { message: error.message, code: error.code };
  }
  if (error instanceof Error) {
    const message = error.name && error.name !== 'Error' ? `${error.name}: ${error.message}` : error.message;
    return { message, code: typeof error.code === 'string' ? error.code : undefined };
  }
  if (error && typeof error === 'object' && typeof error.message === 'string') {
    return { message: error.message, code: typeof error.code === 'string' ? error.code : undefined };
  }
  return { message: String(error), code: undefined };
}

/**
 * A recorded error, as a replay throws it. Its code may be `cancelled` (a
 * cancelled child's outcome, say) without this workflow being cancelled:
 * only the host's own answers raise `CancelledError`.
 */
function fromHost(error) {
  return new DurableError(error.message, { code: error.code });
}

/** The reason an import's `result` error carried (thrown by the bindings). */
function thrownReason(error) {
  if (error && typeof error === 'object' && 'payload' in error) {
    return error.payload;
  }
  return error instanceof Error ? error.message : String(error);
}

/** `value` as recorded JSON: `undefined` (nothing returned) is recorded as `null`. */
function encode(value, what) {
  let json;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    // Another attempt would fail the same way.
    throw new PermanentError(`${what} cannot be stored as JSON: ${error.message}`);
  }
  return json === undefined ? 'null' : json;
}

function decode(recorded) {
  if (recorded.tag === 'err') {
    throw fromHost(recorded.val);
  }
  return JSON.parse(recorded.val);
}

/** FNV-1a (64 bits) of a step's JSON input, as the Rust SDK makes it. */
function fingerprint(json) {
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(json)) {
    hash = BigInt.asUintN(64, (hash ^ BigInt(byte)) * 0x100000001b3n);
  }
  return `fnv1a64:${hash.toString(16).padStart(16, '0')}`;
}

function checkName(name, what) {
  if (typeof name !== 'string' || name.length === 0) {
    throw new TypeError(`a ${what} needs a name: a non-empty string that stays the same on every run`);
  }
}

function isPermanent(error) {
  return error instanceof DurableError && error.permanent;
}

/** The workflow's handle on the host: every durable operation goes through it. */
class Context {
  /** The id of the workflow being run. */
  get workflowId() {
    return host.workflowId();
  }

  /**
   * Run `body` as the durable step `name`, or hand back its recorded result
   * if an earlier run completed it. The value is stored as JSON; what comes
   * back is the value as a replay will see it (JSON-decoded). A thrown
   * error is recorded too, and thrown again on every replay.
   *
   * `options.retry` (`{ maxAttempts, initialBackoffMs, maxBackoffMs,
   * multiplier }`) retries a failed attempt; each failure is recorded before
   * the backoff, so the count survives a crash. A `PermanentError`, or the
   * last allowed attempt's error, becomes the step's result.
   */
  async step(name, body, options = {}) {
    checkName(name, 'step');
    const policy = retryPolicy(options.retry);
    const start = host.beginStep(name);
    return this.#run(name, start, policy, body);
  }

  /** `step` with a retry policy: `ctx.stepWithRetry('charge', { maxAttempts: 5 }, body)`. */
  async stepWithRetry(name, retry, body) {
    return this.step(name, body, { retry });
  }

  /**
   * `step` for a body that works on `input`: `body(input)`. A fingerprint of
   * the input is recorded, and a replay that reaches the step with another
   * input stops as non-deterministic instead of handing back a result that
   * came from other arguments.
   */
  async stepWithInput(name, input, body, options = {}) {
    checkName(name, 'step');
    const policy = retryPolicy(options.retry);
    const start = host.beginStepWithInput(name, fingerprint(encode(input, `the input of step \`${name}\``)));
    return this.#run(name, start, policy, () => body(input));
  }

  async #run(name, start, policy, body) {
    if (start.tag === 'replayed') {
      return decode(start.val);
    }
    if (start.tag === 'cancelled') {
      throw new CancelledError(start.val);
    }
    let run = start.val;
    for (;;) {
      // A flag, not `failure !== undefined`: `throw undefined` is a failure too.
      let failed = false;
      let failure;
      let recorded;
      try {
        const value = await withCurrentStep(run, body);
        recorded = { tag: 'ok', val: encode(value, `the value of step \`${name}\``) };
      } catch (error) {
        failed = true;
        failure = error;
      }
      if (failed && !isPermanent(failure) && run.failures + 1 < policy.maxAttempts) {
        // The host records the failure, waits out the backoff durably and
        // announces the next attempt.
        const backoff = BigInt(backoffBefore(policy, run.failures + 2));
        run = host.recordAttempt(run.key, toHost(failure), backoff);
        continue;
      }
      if (failed) {
        recorded = { tag: 'err', val: toHost(failure) };
      }
      host.finishStep(run.key, recorded);
      // Hand back exactly what a replay will see.
      return decode(recorded);
    }
  }

  /**
   * Sleep durably: the wake-up time is recorded (the step `durable.sleep`),
   * so a workflow resumed after a crash sleeps only what is left. A long
   * sleep holds no process under `serve`.
   */
  async sleep(ms) {
    const duration = millis(ms, 'a sleep');
    try {
      host.sleep(duration);
    } catch (error) {
      throw new CancelledError(thrownReason(error));
    }
  }

  /** The current time as a `Date`, recorded: every replay sees the same instant. */
  async now() {
    return new Date(await this.step('durable.now', () => Date.now()));
  }

  /** A random number in [0, 1), recorded: every replay sees the same value. */
  async random() {
    return this.step('durable.random', () => Math.random());
  }

  /** A random (version 4) UUID, recorded: every replay sees the same one. */
  async uuid() {
    return this.step('durable.uuid', () => {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
      bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
      const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    });
  }

  /**
   * Run branches (made by functions `branch` returned) at the same time,
   * each in a fresh instance of this workflow on its own host thread, and
   * return their values in order; throws the first failed branch's error,
   * as `Promise.all` does. Each branch is checkpointed on its own: after a
   * crash only unfinished ones run again.
   */
  async parallel(calls) {
    const settled = await this.parallelSettled(calls);
    const failed = settled.find((outcome) => outcome.status === 'rejected');
    if (failed) {
      throw failed.reason;
    }
    return settled.map((outcome) => outcome.value);
  }

  /** `parallel`, returning every branch's outcome as `Promise.allSettled` does. */
  async parallelSettled(calls) {
    const specs = calls.map((call) => {
      if (!call || call[BRANCH_CALL] !== true) {
        throw new TypeError(
          'ctx.parallel takes branch calls: const laptop = branch("name", fn); ctx.parallel([laptop(input)])',
        );
      }
      try {
        return { spec: { ...call.spec, input: encode(call.input, `the input of branch \`${call.spec.name}\``) } };
      } catch (error) {
        return { error };
      }
    });
    let results;
    try {
      results = host.runParallel(specs.filter((s) => s.spec).map((s) => s.spec));
    } catch (error) {
      const reason = new CancelledError(thrownReason(error));
      return specs.map(() => ({ status: 'rejected', reason }));
    }
    let next = 0;
    return specs.map((s) => {
      if (s.error) {
        return { status: 'rejected', reason: s.error };
      }
      try {
        return { status: 'fulfilled', value: decode(results[next++]) };
      } catch (reason) {
        return { status: 'rejected', reason };
      }
    });
  }

  /**
   * Wait for the signal `name` and return its value, or `undefined` when
   * `options.timeoutMs` runs out first. Signals sent before the wait are
   * kept; each is taken once and recorded, so a replay gets the same value.
   */
  async waitSignal(name, options = {}) {
    checkName(name, 'signal');
    const timeout = options.timeoutMs === undefined ? undefined : millis(options.timeoutMs, 'a timeout');
    let json;
    try {
      json = host.waitSignal(name, timeout);
    } catch (error) {
      throw new CancelledError(thrownReason(error));
    }
    return json === undefined ? undefined : JSON.parse(json);
  }

  /**
   * Start the workflow `workflowId` as a child of this one, once (recorded
   * with the queueing): of the newest version of `options.deployment`, or of
   * this workflow's own component when none is given.
   */
  async startChild(workflowId, input, options = {}) {
    const child = {
      workflowId,
      deployment: options.deployment,
      input: encode(input, `the input of child workflow ${workflowId}`),
    };
    try {
      host.startChild(child);
    } catch (error) {
      const reason = thrownReason(error);
      if (typeof reason !== 'object' || reason === null) {
        throw new DurableError(String(reason));
      }
      // Here the code `cancelled` is this workflow's own cancellation.
      throw reason.code === CANCELLED ? new CancelledError(reason.message) : fromHost(reason);
    }
    return workflowId;
  }

  /**
   * Wait for the child `workflowId` to end and return its output (its error
   * is thrown), or `undefined` when `options.timeoutMs` runs out first.
   */
  async awaitChild(workflowId, options = {}) {
    const timeout = options.timeoutMs === undefined ? undefined : millis(options.timeoutMs, 'a timeout');
    let outcome;
    try {
      outcome = host.awaitChild(workflowId, timeout);
    } catch (error) {
      throw new CancelledError(thrownReason(error));
    }
    return outcome === undefined ? undefined : decode(outcome);
  }

  /** Publish `value` under `key` for observers (`durable-host get-event`), once. */
  async setEvent(key, value) {
    host.setEvent(key, encode(value, `the event \`${key}\``));
  }

  /** A line for the workflow's log, written once: not again when a replay passes it. */
  log(message) {
    host.log(String(message));
  }
}

const BRANCH_CALL = Symbol('durable-sdk branch call');
// Branch bodies by name. Filled as the module is evaluated, so the fresh
// instance that runs a branch knows every branch the workflow can start.
const branches = new Map();

/**
 * Declare a parallel branch, at the top level of the workflow's module:
 * `const provisionLaptop = branch('provision_laptop', async (employee) => ...)`.
 * Calling the result with an input makes a call for `ctx.parallel`. The
 * body runs in a fresh instance of the workflow, so it gets only its input
 * (JSON) and must not use `ctx`. `options.retry` has the host retry a
 * failed attempt, each in a fresh instance; the host cannot tell a
 * `PermanentError` from its message, so a branch that must not be retried
 * on some errors should have no retry policy.
 */
export function branch(name, body, options = {}) {
  checkName(name, 'branch');
  if (typeof body !== 'function') {
    throw new TypeError(`branch \`${name}\` needs a function to run`);
  }
  if (branches.has(name)) {
    throw new TypeError(`two branches are named \`${name}\`: a branch's name is its step's name and must be unique`);
  }
  branches.set(name, body);
  let retry;
  if (options.retry) {
    const policy = retryPolicy(options.retry);
    retry = {
      maxAttempts: policy.maxAttempts,
      initialBackoffMs: BigInt(policy.initialBackoffMs),
      maxBackoffMs: BigInt(policy.maxBackoffMs),
      multiplier: policy.multiplier,
    };
  }
  return (input) => ({ [BRANCH_CALL]: true, spec: { name, entry: name, retry }, input });
}

/**
 * `fetch`, for use inside a step: it adds the step's idempotency key as the
 * `Idempotency-Key` header (the step's key for its first request, `KEY/2`
 * for the second, and so on, counted afresh on each attempt), so a service
 * can tell a repeated attempt from a new request. The host lets the request
 * through only to destinations granted with `--allow-http`.
 */
export async function durableFetch(resource, init = {}) {
  const step = current;
  if (!step) {
    throw new PermanentError('fetch outside a step: wrap the request in ctx.step(...) so that it runs once');
  }
  requests += 1;
  const headers = new Headers(init.headers ?? (resource instanceof Request ? resource.headers : undefined));
  if (!headers.has('idempotency-key')) {
    headers.set('idempotency-key', requests === 1 ? step.idempotencyKey : `${step.idempotencyKey}/${requests}`);
  }
  try {
    return await fetch(resource, { ...init, headers });
  } catch (error) {
    // The engine's message does not say why (a refusal by the host's
    // allow-list looks like any network error): name the request and the flag.
    const url = resource instanceof Request ? resource.url : String(resource);
    const method = (init.method ?? (resource instanceof Request ? resource.method : 'GET')).toUpperCase();
    throw new DurableError(
      `${method} ${shown(url)} failed: ${String(error?.message ?? error).trim()}; if the host refused it, ` +
        'grant its destination with --allow-http HOST[:PORT] (durable-host history lists the requests)',
    );
  }
}

/** `url` without its query and user, which may hold secrets. */
function shown(url) {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return url.split('?')[0];
  }
}
export { durableFetch as fetch };

/** The component's exports for `workflow`. Used by the module `durable-build` generates. */
export function __exports(workflow) {
  if (typeof workflow !== 'function') {
    throw new TypeError(
      'the workflow module must `export default` the workflow function: export default async function onboard(ctx, input) { ... }',
    );
  }
  const ctx = new Context();
  return {
    async run(input) {
      try {
        return encode(await workflow(ctx, JSON.parse(input)), 'the workflow output');
      } catch (error) {
        throw toHost(error);
      }
    },
    async runBranch(entry, step, input) {
      const body = branches.get(entry);
      if (!body) {
        throw { message: `this component has no branch \`${entry}\`; was it rebuilt without it?`, code: undefined };
      }
      try {
        const value = await withCurrentStep(step, () => body(JSON.parse(input)));
        return encode(value, `the value of branch \`${entry}\``);
      } catch (error) {
        throw toHost(error);
      }
    },
  };
}
