/**
 * The client against a live stack at $IMAGEJOBS_TARGET (`host:port`: Envoy's gRPC port;
 * clients/test.sh sets it), and at $IMAGEJOBS_API_TARGET (an API process directly) when
 * that is set too. Each test uses a virtual key of its own, so lists see only its jobs.
 */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { Code } from "@connectrpc/connect";
import {
  ImageJobsClient,
  ImageJobsError,
  JobFailedError,
  JobKind,
  JobStatus,
  WaitTimeoutError,
} from "../src/index.js";
import { decodePng } from "./png.js";

const target = process.env.IMAGEJOBS_TARGET;
const direct = process.env.IMAGEJOBS_API_TARGET;
if (!target && process.env.CI) {
  throw new Error("IMAGEJOBS_TARGET is required in CI");
}
const skip = target ? false : "IMAGEJOBS_TARGET is not set";
const SLOW = { mock_latency_ms: 20_000 };

function client(server = target ?? ""): ImageJobsClient {
  return new ImageJobsClient(server, { key: `sk-bf-ts-${randomUUID()}` });
}

test("generate returns PNG bytes that decode at the asked size", { skip }, async () => {
  const result = await client().generate("a red fox", { model: "mock/image-1", size: "40x30", n: 2 });
  assert.deepEqual(
    result.images.map((i) => i.index),
    [0, 1],
  );
  const image = result.images[1];
  assert.ok(image !== undefined);
  assert.equal(image.mimeType, "image/png");
  assert.equal(Number(image.sizeBytes), image.data.length);
  assert.deepEqual(decodePng(image.data), { width: 40, height: 30 });
  assert.equal(result.extraFields?.provider, "mock");
  assert.equal(result.extraFields?.modelRequested, "image-1");
});

test("submit, then watch until completed, through every state once", { skip }, async () => {
  const c = client();
  const job = await c.submit("generations", { model: "mock/m", prompt: "steps", size: "8x8", extra: { mock_latency_ms: 300 } });
  assert.equal(job.status, JobStatus.PENDING);
  assert.equal(job.kind, JobKind.GENERATION);
  const states: JobStatus[] = [];
  for await (const seen of c.watch(job.id)) {
    assert.equal(seen.id, job.id);
    states.push(seen.status);
  }
  assert.equal(states.at(-1), JobStatus.COMPLETED);
  assert.ok(states.includes(JobStatus.PROCESSING), `states: ${states}`);
  assert.equal(states.filter((s) => s === JobStatus.COMPLETED).length, 1);
  const waited = await c.wait(job.id); // already terminal: at once
  const got = await c.get(job.id, { kind: "generations" });
  assert.equal(waited.status, JobStatus.COMPLETED);
  assert.deepEqual(got.result?.images[0]?.data, waited.result?.images[0]?.data);
  assert.deepEqual(decodePng(got.result?.images[0]?.data ?? new Uint8Array()), { width: 8, height: 8 });
});

test("a 400 carries the typed ErrorResponse from grpc-status-details-bin", { skip }, async () => {
  const err = await client()
    .submit(JobKind.GENERATION, { model: "mock/image-1", prompt: "" })
    .catch((e: unknown) => e);
  assert.ok(err instanceof ImageJobsError, String(err));
  assert.equal(err.grpcCode, Code.InvalidArgument);
  assert.equal(err.statusCode, 400);
  assert.equal(err.type, "invalid_request_error");
  assert.equal(err.code, "invalid_request");
  assert.equal(err.param, "prompt");
  assert.equal(err.message, "prompt cannot be empty");
  assert.ok(err.detail?.isBifrostError);
  assert.match(err.eventId, /^[0-9a-f-]{36}$/);
});

test("an unknown job is NotFound (404), typed too", { skip }, async () => {
  const err = await client().get(randomUUID()).catch((e: unknown) => e);
  assert.ok(err instanceof ImageJobsError, String(err));
  assert.equal(err.grpcCode, Code.NotFound);
  assert.equal(err.statusCode, 404);
  assert.equal(err.code, "job_not_found");
});

test("cancel ends a running job cancelled; a second cancel is a 409", { skip }, async () => {
  const c = client();
  const job = await c.submit("generations", { model: "mock/m", prompt: "slow", size: "8x8", extra: SLOW });
  const cancelled = await c.cancel(job.id);
  assert.equal(cancelled.status, JobStatus.CANCELLED);
  assert.equal(cancelled.statusCode, 499);
  assert.equal(cancelled.error?.error?.code, "cancelled");
  const waited = await c.wait(job.id, { timeoutMs: 10_000 });
  assert.equal(waited.status, JobStatus.CANCELLED);
  const again = await c.cancel(job.id).catch((e: unknown) => e);
  assert.ok(again instanceof ImageJobsError, String(again));
  assert.equal(again.grpcCode, Code.FailedPrecondition);
  assert.equal(again.statusCode, 409);
});

test("generate of a job that is cancelled meanwhile is a JobFailedError", { skip }, async () => {
  const c = client();
  const pending = c.generate("slow", { model: "mock/m", size: "8x8", extra: SLOW });
  const [job] = await waitForJobs(c, 1);
  await c.cancel(job?.id ?? "");
  const err = await pending.catch((e: unknown) => e);
  assert.ok(err instanceof JobFailedError, String(err));
  assert.equal(err.job.status, JobStatus.CANCELLED);
  assert.equal(err.code, "cancelled");
});

test("wait gives up after its timeout with the job as last seen", { skip }, async () => {
  const c = client();
  const job = await c.submit("generations", { model: "mock/m", prompt: "slow", size: "8x8", extra: SLOW });
  const err = await c.wait(job.id, { timeoutMs: 300 }).catch((e: unknown) => e);
  assert.ok(err instanceof WaitTimeoutError, String(err));
  assert.ok(err.job !== undefined && [JobStatus.PENDING, JobStatus.PROCESSING].includes(err.job.status));
  await c.cancel(job.id);
});

test("list pages through the key's jobs, newest first; one idempotency key makes one job", { skip }, async () => {
  const c = client();
  const first = await c.submit("generations", { model: "mock/m", prompt: "one", size: "8x8" });
  const second = await c.submit("generations", { model: "mock/m", prompt: "two", size: "8x8" }, { idempotencyKey: "k-1" });
  const again = await c.submit("generations", { model: "mock/m", prompt: "two", size: "8x8" }, { idempotencyKey: "k-1" });
  assert.equal(again.id, second.id);
  const listed: string[] = [];
  for await (const job of c.list({ pageSize: 1 })) {
    listed.push(job.id);
  }
  assert.deepEqual(listed, [second.id, first.id]);
  await c.wait(second.id, { timeoutMs: 10_000 });
  const done: string[] = [];
  for await (const job of c.list({ status: "completed", kind: JobKind.GENERATION, limit: 5 })) {
    done.push(job.id);
  }
  assert.ok(done.includes(second.id), `completed: ${done}`);
});

test("the API process directly, without Envoy", { skip: direct ? false : "IMAGEJOBS_API_TARGET is not set" }, async () => {
  const result = await client(direct).generate("direct", { model: "mock/image-1", size: "16x16" });
  assert.deepEqual(decodePng(result.images[0]?.data ?? new Uint8Array()), { width: 16, height: 16 });
});

/** The key's first `n` jobs, once listed (a bounded poll: 5 s). */
async function waitForJobs(c: ImageJobsClient, n: number) {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; ) {
    const jobs = [];
    for await (const job of c.list({ limit: n })) {
      jobs.push(job);
    }
    if (jobs.length >= n) {
      return jobs;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${n} jobs listed within 5 s`);
}
