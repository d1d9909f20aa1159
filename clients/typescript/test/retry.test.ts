/**
 * Retries, without a server: an in-memory Connect router in place of the transport. A
 * submit that meets UNAVAILABLE is tried again with the same idempotency key; errors with
 * our detail are not retried; a cancel is never retried.
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import {
  ErrorResponseSchema,
  ImageJobService,
  ImageJobsClient,
  ImageJobsError,
  JobSchema,
  JobStatus,
} from "../src/index.js";

const FAST = { initialBackoffMs: 1, maxBackoffMs: 2 };

function withService(impl: Partial<ServiceImpl<typeof ImageJobService>>): ImageJobsClient {
  const transport = createRouterTransport((router) => router.service(ImageJobService, impl));
  return new ImageJobsClient("in-memory", { transport, retry: FAST });
}

test("a submit retried after UNAVAILABLE sends one idempotency key on every try", async () => {
  const keys: string[] = [];
  const c = withService({
    submitImageJob(request) {
      keys.push(request.idempotencyKey);
      if (keys.length < 3) {
        throw new ConnectError("no healthy upstream", Code.Unavailable);
      }
      return create(JobSchema, { id: "job-1", status: JobStatus.PENDING });
    },
  });
  const job = await c.submit("generations", { model: "mock/m", prompt: "p" });
  assert.equal(job.id, "job-1");
  assert.equal(keys.length, 3);
  assert.ok(keys[0]);
  assert.equal(new Set(keys).size, 1);
  const first = keys[0];
  keys.length = 0;
  await c.submit("generations", { model: "mock/m", prompt: "p" });
  assert.equal(new Set(keys).size, 1);
  assert.notEqual(keys[0], first, "another logical submit gets a key of its own");
});

test("an error with our detail is not retried, and is decoded", async () => {
  let calls = 0;
  const c = withService({
    submitImageJob() {
      calls += 1;
      const detail = create(ErrorResponseSchema, {
        type: "invalid_request_error",
        statusCode: 400,
        isBifrostError: true,
        error: { type: "invalid_request_error", code: "invalid_request", message: "bad", param: "size" },
      });
      throw new ConnectError("bad", Code.Internal, undefined, [{ desc: ErrorResponseSchema, value: detail }]);
    },
  });
  const err = await c.submit("generations", { model: "mock/m", prompt: "p" }).catch((e: unknown) => e);
  assert.ok(err instanceof ImageJobsError, String(err));
  assert.equal(calls, 1);
  assert.equal(err.statusCode, 400);
  assert.equal(err.param, "size");
});

test("retries stop after the policy's attempts; a cancel is never retried", async () => {
  let submits = 0;
  let cancels = 0;
  const c = withService({
    submitImageJob() {
      submits += 1;
      throw new ConnectError("down", Code.Unavailable);
    },
    cancelJob() {
      cancels += 1;
      throw new ConnectError("down", Code.Unavailable);
    },
  });
  const err = await c.submit("generations", { model: "mock/m", prompt: "p" }).catch((e: unknown) => e);
  assert.ok(err instanceof ImageJobsError);
  assert.equal(err.grpcCode, Code.Unavailable);
  assert.equal(err.statusCode, 503);
  assert.equal(submits, 5);
  await assert.rejects(c.cancel("job-1"), ImageJobsError);
  assert.equal(cancels, 1);
});
