// Types of durable-sdk: see index.js for what each operation guarantees.

/** A value the host stores as JSON. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The code of an error that tells of a cancellation. */
export const CANCELLED: 'cancelled';

export interface ErrorOptions {
  /** A short stable code a caller can match on (`card_declined`), recorded with the message. */
  code?: string;
  permanent?: boolean;
}

/** An error a step or a workflow ends with; a replay throws the same message and code again. */
export class DurableError extends Error {
  constructor(message: string, options?: ErrorOptions);
  readonly code: string | undefined;
  /** Skips the remaining retries. */
  readonly permanent: boolean;
}

/** An error retrying cannot fix: a step fails with it at once, whatever its retry policy. */
export class PermanentError extends DurableError {
  constructor(message: string, options?: Omit<ErrorOptions, 'permanent'>);
}

/** The workflow was cancelled: the operation that threw this did not run. */
export class CancelledError extends DurableError {
  constructor(reason: string);
  readonly code: 'cancelled';
}

/** How a failed step or branch is retried: up to `maxAttempts` attempts in all. */
export interface RetryPolicy {
  maxAttempts: number;
  /** Default 100. */
  initialBackoffMs?: number;
  /** Default 30,000. */
  maxBackoffMs?: number;
  /** Default 2. */
  multiplier?: number;
}

export interface StepOptions {
  retry?: RetryPolicy;
}

/** The step whose body is executing, as the host announced it. */
export interface StepRun {
  /** `name#NNNNNN`. */
  readonly key: string;
  /** 1 on the first execution; one more for each execution since. */
  readonly attempt: number;
  /** Failed attempts so far: what a retry policy counts. */
  readonly failures: number;
  /** `<workflow id>/<step key>`: hand it to services so a repeated attempt is recognised. */
  readonly idempotencyKey: string;
}

/** A branch with its input, for `ctx.parallel`. */
export interface BranchCall<T> {
  readonly spec: { readonly name: string };
  readonly input: unknown;
  /** Only carries the branch's value type. */
  readonly __value?: T;
}

type Values<T extends readonly BranchCall<unknown>[]> = {
  -readonly [K in keyof T]: T[K] extends BranchCall<infer V> ? V : never;
};
type Settled<T extends readonly BranchCall<unknown>[]> = {
  -readonly [K in keyof T]: T[K] extends BranchCall<infer V> ? PromiseSettledResult<V> : never;
};

/** The workflow's handle on the host: every durable operation goes through it. */
export interface Context {
  /** The id of the workflow being run. */
  readonly workflowId: string;
  /** Run `body` once as the step `name`, or hand back its recorded result. */
  step<T>(name: string, body: () => T | Promise<T>, options?: StepOptions): Promise<T>;
  /** `step` with a retry policy. */
  stepWithRetry<T>(name: string, retry: RetryPolicy, body: () => T | Promise<T>): Promise<T>;
  /** `step` whose recorded input fingerprint must match on replay. */
  stepWithInput<I, T>(name: string, input: I, body: (input: I) => T | Promise<T>, options?: StepOptions): Promise<T>;
  /** Sleep durably. */
  sleep(ms: number): Promise<void>;
  /** The current time, recorded. */
  now(): Promise<Date>;
  /** A random number in [0, 1), recorded. */
  random(): Promise<number>;
  /** A random version 4 UUID, recorded. */
  uuid(): Promise<string>;
  /** Run branches at the same time; throws the first failed branch's error. */
  parallel<const T extends readonly BranchCall<unknown>[]>(calls: T): Promise<Values<T>>;
  /** Run branches at the same time; every branch's outcome. */
  parallelSettled<const T extends readonly BranchCall<unknown>[]>(calls: T): Promise<Settled<T>>;
  /** Wait for the signal `name`; `undefined` when the timeout runs out first. */
  waitSignal<T = Json>(name: string, options?: { timeoutMs?: number }): Promise<T | undefined>;
  /** Start a child workflow once; resolves to its id. */
  startChild(workflowId: string, input: unknown, options?: { deployment?: string }): Promise<string>;
  /** Wait for a child workflow's output (its error is thrown); `undefined` on timeout. */
  awaitChild<T = Json>(workflowId: string, options?: { timeoutMs?: number }): Promise<T | undefined>;
  /** Publish a value under `key` for observers, once. */
  setEvent(key: string, value: unknown): Promise<void>;
  /** A line for the workflow's log, written once. */
  log(message: unknown): void;
}

/** Declare a parallel branch at the top level of the workflow's module. */
export function branch<I, T>(
  name: string,
  body: (input: I) => T | Promise<T>,
  options?: StepOptions,
): (input: I) => BranchCall<T>;

/** The executing step, or `undefined` outside a step body. */
export function currentStep(): StepRun | undefined;

/** `fetch` inside a step, with the step's `Idempotency-Key`. */
export function fetch(resource: string | URL | Request, init?: RequestInit): Promise<Response>;
export { fetch as durableFetch };
