/**
 * `ImageJobsClient`: a thin, typed helper over the generated ImageJobService client,
 * speaking gRPC (HTTP/2) to Envoy's port 8080 or to an API process directly. It hands back
 * the generated messages themselves (`Job`, `JobResult`: enums, raw image bytes).
 *
 * - submit: one idempotency key per logical submit, the same on every retry;
 * - get / list: retried like submit (reads are safe to repeat); cancel: never retried;
 * - watch: WatchJob, re-attached when its stream drops or ends before the job does;
 * - wait: watch until the job is terminal; generate: submit + wait, its result;
 * - images the server did not inline (above 3 MiB, or `response_format: "url"`) are
 *   fetched with StreamJobImage before get / watch / wait / generate return the job.
 */

import { randomUUID } from "node:crypto";
import { equals, type MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, Code, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { fromError, ImageJobsError, JobFailedError, WaitTimeoutError } from "./errors.js";
import {
  type ImageRequestSchema,
  ImageJobService,
  type Job,
  JobKind,
  type JobResult,
  JobSchema,
  JobStatus,
  type ResultImage,
} from "./gen/imagejobs/v1/jobs_pb.js";
import { DEFAULT_RETRY, backoffMs, type RetryPolicy, retryable, sleep, withRetries } from "./retry.js";

/** A job kind: the enum, or its REST word. */
export type KindArg = JobKind | "generations" | "edits" | "variations";
/** A job status: the enum, or its REST word. */
export type StatusArg = JobStatus | "pending" | "processing" | "completed" | "failed" | "cancelled";
/** The typed request's fields (`model`, `prompt`, `size`, `n`, … and `extra` for provider
 * parameters such as the mock's `mock_latency_ms`). */
export type ImageRequestInit = MessageInitShape<typeof ImageRequestSchema>;

export const DEFAULT_TIMEOUT_MS = 30_000;
const VK_HEADER = "x-bf-vk";
const KINDS: Record<string, JobKind> = {
  generations: JobKind.GENERATION,
  edits: JobKind.EDIT,
  variations: JobKind.VARIATION,
};
const TERMINAL = new Set([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]);

export interface ClientOptions {
  /** A virtual key, sent as `x-bf-vk` on every call (a job made with it is its alone). */
  key?: string;
  /** TLS with Node's default roots (https); default plaintext. Ignored with `transport`. */
  tls?: boolean;
  /** The deadline of one unary call, in milliseconds (default 30 000). */
  timeoutMs?: number;
  /** Extra metadata for every call, e.g. `{"x-request-id": "…"}`. */
  headers?: Record<string, string>;
  /** How retryable failures are retried (DEFAULT_RETRY; `{attempts: 1}`: never). */
  retry?: Partial<RetryPolicy>;
  /** A transport to use instead of a gRPC transport to the target (tests, custom TLS). */
  transport?: Transport;
}

export interface SubmitOptions {
  /** Default: a fresh UUID for this submit, sent unchanged on every retry. */
  idempotencyKey?: string;
  /** Seconds to keep the result after completion (0: the server's default). */
  resultTtlSeconds?: number;
  /** A correlation id (the server makes one when empty). */
  requestId?: string;
  /** A configured webhook endpoint's name, called when the job ends. */
  webhook?: string;
}

export interface ReadOptions {
  /** The job's kind, if known (another kind is NotFound); default any. */
  kind?: KindArg;
}

export interface WaitOptions extends ReadOptions {
  /** Give up after this many milliseconds (WaitTimeoutError); default never. */
  timeoutMs?: number;
}

export interface ListOptions {
  status?: StatusArg;
  kind?: KindArg;
  /** At most this many jobs in all; default every one. */
  limit?: number;
  /** Jobs fetched per call, 1-100 (default 20). */
  pageSize?: number;
}

export type GenerateOptions = Omit<ImageRequestInit, "prompt" | "$typeName"> & {
  model: string;
  /** Give up waiting after this many milliseconds (WaitTimeoutError); default never. */
  timeoutMs?: number;
};

/** The enum for a kind given either way. */
export function jobKind(kind: KindArg | undefined): JobKind {
  if (kind === undefined || typeof kind === "number") {
    return kind ?? JobKind.UNSPECIFIED;
  }
  const found = KINDS[kind];
  if (found === undefined) {
    throw new TypeError(`unknown job kind ${JSON.stringify(kind)}`);
  }
  return found;
}

/** The enum for a status given either way. */
export function jobStatus(status: StatusArg | undefined): JobStatus {
  if (status === undefined || typeof status === "number") {
    return status ?? JobStatus.UNSPECIFIED;
  }
  const found = JobStatus[status.toUpperCase() as keyof typeof JobStatus];
  if (found === undefined) {
    throw new TypeError(`unknown job status ${JSON.stringify(status)}`);
  }
  return found;
}

/** Whether the job has ended (completed, failed or cancelled: it never changes again). */
export function isTerminal(job: Job): boolean {
  return TERMINAL.has(job.status);
}

/** A client of one imagejobs server (`host:port`: its gateway, or an API process). */
export class ImageJobsClient {
  readonly target: string;
  private readonly stub: Client<typeof ImageJobService>;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy;

  constructor(target: string, options: ClientOptions = {}) {
    this.target = target;
    const transport =
      options.transport ??
      createGrpcTransport({ baseUrl: `${options.tls ? "https" : "http"}://${target}` });
    this.stub = createClient(ImageJobService, transport);
    this.headers = { ...options.headers, ...(options.key ? { [VK_HEADER]: options.key } : {}) };
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
  }

  /** Submit a job; answers it `pending` (or, for an idempotency key already used with the
   * same request, the job that key made, as it is now). */
  async submit(kind: KindArg, request: ImageRequestInit, options: SubmitOptions = {}): Promise<Job> {
    const message = {
      kind: jobKind(kind),
      request,
      resultTtlSeconds: BigInt(options.resultTtlSeconds ?? 0),
      requestId: options.requestId ?? "",
      idempotencyKey: options.idempotencyKey ?? randomUUID(),
      webhook: options.webhook ?? "",
    };
    return this.unary(() => this.stub.submitImageJob(message, this.callOptions()));
  }

  /** The job as it is now, with every result image's bytes. */
  async get(jobId: string, options: ReadOptions = {}): Promise<Job> {
    const request = { jobId, kind: jobKind(options.kind) };
    return this.complete(await this.unary(() => this.stub.getJob(request, this.callOptions())));
  }

  /** The job now, then each change, ending after its terminal state. */
  async *watch(jobId: string, options: ReadOptions & { signal?: AbortSignal } = {}): AsyncGenerator<Job> {
    const request = { jobId, kind: jobKind(options.kind) };
    let last: Job | undefined;
    for (let retries = 0; ; ) {
      let error: unknown;
      try {
        const stream = this.stub.watchJob(request, { headers: this.headers, signal: options.signal });
        for await (const job of stream) {
          if (last !== undefined && equals(JobSchema, job, last)) {
            continue; // a re-attach starts with the state already seen
          }
          last = job;
          retries = 0;
          yield await this.complete(job);
          if (isTerminal(job)) {
            return;
          }
        }
      } catch (err) {
        if (options.signal?.aborted || !retryable(err)) {
          throw fromError(err);
        }
        error = err;
      }
      retries += 1; // the stream failed, or ended before the job did
      if (retries >= this.retry.attempts) {
        throw error === undefined ? unavailable(`the watch of job ${jobId} kept ending early`) : fromError(error);
      }
      await sleep(backoffMs(this.retry, retries));
    }
  }

  /** The job once terminal, through WatchJob (no polling). */
  async wait(jobId: string, options: WaitOptions = {}): Promise<Job> {
    const abort = new AbortController();
    const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => abort.abort(), options.timeoutMs);
    let last: Job | undefined;
    try {
      for await (const job of this.watch(jobId, { kind: options.kind, signal: abort.signal })) {
        last = job;
      }
    } catch (err) {
      if (abort.signal.aborted) {
        throw new WaitTimeoutError(jobId, options.timeoutMs ?? 0, last);
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
    if (last === undefined || !isTerminal(last)) {
      throw unavailable(`the watch of job ${jobId} ended before the job did`);
    }
    return last;
  }

  /** Cancel a pending or processing job; answers it `cancelled`. A job already terminal
   * is FailedPrecondition (statusCode 409). Not retried. */
  async cancel(jobId: string, options: ReadOptions = {}): Promise<Job> {
    const request = { jobId, kind: jobKind(options.kind) };
    try {
      return await this.stub.cancelJob(request, this.callOptions());
    } catch (err) {
      throw fromError(err);
    }
  }

  /** The caller's jobs, newest first, paged through; their images carry no bytes. */
  async *list(options: ListOptions = {}): AsyncGenerator<Job> {
    const pageSize = options.pageSize ?? 20;
    let pageToken = "";
    for (let count = 0; options.limit === undefined || count < options.limit; ) {
      const request = {
        status: jobStatus(options.status),
        kind: jobKind(options.kind),
        limit: options.limit === undefined ? pageSize : Math.min(pageSize, options.limit - count),
        pageToken,
      };
      const page = await this.unary(() => this.stub.listJobs(request, this.callOptions()));
      for (const job of page.jobs) {
        count += 1;
        yield job;
      }
      pageToken = page.nextPageToken;
      if (!pageToken) {
        return;
      }
    }
  }

  /** One result image's bytes, streamed in chunks of at most 1 MiB. */
  async image(jobId: string, index: number): Promise<Uint8Array> {
    return this.unary(async () => {
      const parts: Uint8Array[] = [];
      let size = 0;
      let have = 0;
      for await (const chunk of this.stub.streamJobImage({ jobId, index }, this.callOptions())) {
        if (Number(chunk.offset) !== have) {
          throw brokenStream(jobId, index, "chunks out of order");
        }
        parts.push(chunk.data);
        have += chunk.data.length;
        size = Number(chunk.sizeBytes);
      }
      if (have !== size) {
        throw brokenStream(jobId, index, `${have} of ${size} bytes`);
      }
      return Buffer.concat(parts);
    });
  }

  /** Submit a generation and wait for it: its result, every image with its bytes.
   * JobFailedError if the job failed or was cancelled. */
  async generate(prompt: string, options: GenerateOptions): Promise<JobResult> {
    const { timeoutMs, ...request } = options;
    const job = await this.submit(JobKind.GENERATION, { ...request, prompt });
    const done = await this.wait(job.id, { timeoutMs });
    if (done.status !== JobStatus.COMPLETED || done.result === undefined) {
      throw new JobFailedError(done);
    }
    return done.result;
  }

  private callOptions(): CallOptions {
    return { headers: this.headers, timeoutMs: this.timeoutMs };
  }

  /** One call (its every try), retried per the policy; errors as ImageJobsErrors. */
  private async unary<T>(attempt: () => Promise<T>): Promise<T> {
    try {
      return await withRetries(this.retry, attempt);
    } catch (err) {
      throw fromError(err);
    }
  }

  /** The job with the bytes of every result image the server did not inline. */
  private async complete(job: Job): Promise<Job> {
    const result = job.result;
    if (result === undefined || result.images.every((i) => i.data.length > 0 || i.sizeBytes === 0n)) {
      return job;
    }
    const images = await Promise.all(result.images.map((i) => this.withBytes(job.id, i)));
    return { ...job, result: { ...result, images } };
  }

  private async withBytes(jobId: string, image: ResultImage): Promise<ResultImage> {
    if (image.data.length > 0 || image.sizeBytes === 0n) {
      return image;
    }
    return { ...image, data: await this.image(jobId, image.index) };
  }
}

function unavailable(message: string): ImageJobsError {
  return new ImageJobsError(Code.Unavailable, { statusCode: 503, type: "service_unavailable", code: "unavailable", message });
}

function brokenStream(jobId: string, index: number, why: string): ImageJobsError {
  const message = `job ${jobId} image ${index}: ${why}`;
  return new ImageJobsError(Code.Internal, { statusCode: 502, type: "api_error", code: "bad_image_stream", message });
}
