/**
 * How calls are retried. A call that fails with UNAVAILABLE, or whose stream dropped
 * before our server answered (INTERNAL or UNKNOWN without its error detail), is tried
 * again after a jittered exponential backoff. Reads are safe to repeat; a submit is made
 * safe by its idempotency key, the same on every try, so a retried submit never makes a
 * second job. A cancel is not retried (its first try may have worked).
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { serverDetail } from "./errors.js";

/** `attempts` counts the first try; the wait before retry n (1, 2, …) is
 * `initialBackoffMs * 2**(n-1)`, at most `maxBackoffMs`, jittered down to half; no retry
 * starts later than `maxElapsedMs` after the first try. `attempts: 1` turns retries off. */
export interface RetryPolicy {
  attempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxElapsedMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  attempts: 5,
  initialBackoffMs: 250,
  maxBackoffMs: 3000,
  maxElapsedMs: 30_000,
};

/** The wait before retry number `retry` (1-based), in milliseconds. */
export function backoffMs(policy: RetryPolicy, retry: number): number {
  const full = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * 2 ** (retry - 1));
  return full * (0.5 + Math.random() / 2);
}

/** Whether a failed call may be tried again (see the module's comment). */
export function retryable(err: unknown): boolean {
  if (!(err instanceof ConnectError)) {
    return false;
  }
  if (err.code === Code.Unavailable) {
    return true;
  }
  return (err.code === Code.Internal || err.code === Code.Unknown) && serverDetail(err) === undefined;
}

/** Run `attempt` until it succeeds, fails with an error not retryable, or the policy's
 * attempts or time run out; then throw its last error. */
export async function withRetries<T>(policy: RetryPolicy, attempt: () => Promise<T>): Promise<T> {
  const started = Date.now();
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (err) {
      const wait = backoffMs(policy, tries);
      const late = Date.now() + wait - started > policy.maxElapsedMs;
      if (!retryable(err) || tries >= policy.attempts || late) {
        throw err;
      }
      await sleep(wait);
    }
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
