/**
 * The client's errors. Every failed call becomes an `ImageJobsError` carrying the
 * contract's error body: our server sends it as the `imagejobs.v1.ErrorResponse` detail
 * of its `google.rpc.Status` (the `grpc-status-details-bin` trailer, which Connect's gRPC
 * transport decodes into `ConnectError.details`); a failure that never reached our server
 * (a refused connection, a proxy's answer) gets a body made from its gRPC code.
 *
 *     ImageJobsError        a call failed: grpcCode, statusCode, type, code, message, param
 *     ├── JobFailedError    the job ended failed or cancelled (generate); `job` is it
 *     └── WaitTimeoutError  the job had not ended when wait's timeout passed; `job` as seen
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorResponse, ErrorResponseSchema, type Job } from "./gen/imagejobs/v1/jobs_pb.js";

/** gRPC code -> the HTTP status our server maps it from (as the Python SDK's table). */
const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.Unavailable]: 503,
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.InvalidArgument]: 400,
  [Code.NotFound]: 404,
  [Code.FailedPrecondition]: 409,
  [Code.AlreadyExists]: 409,
  [Code.ResourceExhausted]: 429,
  [Code.DeadlineExceeded]: 504,
};

/** A call failed. The fields are the contract's error body (REST prints the same). */
export class ImageJobsError extends Error {
  /** The call's gRPC status code. */
  readonly grpcCode: Code;
  /** The HTTP status REST would answer with (e.g. 400). */
  readonly statusCode: number;
  /** The error type, e.g. `invalid_request_error`. */
  readonly type: string;
  /** The machine-readable code, e.g. `invalid_request`, `job_not_found`. */
  readonly code: string;
  /** The request field at fault, when one is (e.g. `prompt`). */
  readonly param: string;
  /** Identifies this error occurrence in the server's logs. */
  readonly eventId: string;
  /** The server's ErrorResponse itself; undefined when the error did not come from it. */
  readonly detail: ErrorResponse | undefined;

  constructor(grpcCode: Code, body: ErrorBody, detail?: ErrorResponse, options?: ErrorOptions) {
    super(body.message, options);
    this.name = new.target.name;
    this.grpcCode = grpcCode;
    this.statusCode = body.statusCode;
    this.type = body.type;
    this.code = body.code;
    this.param = body.param ?? "";
    this.eventId = body.eventId ?? "";
    this.detail = detail;
  }
}

/** The contract's error body as plain fields. */
export interface ErrorBody {
  statusCode: number;
  type: string;
  code: string;
  message: string;
  param?: string;
  eventId?: string;
}

/** The job ended `failed` or `cancelled`; `job` is the terminal job, the fields its error. */
export class JobFailedError extends ImageJobsError {
  readonly job: Job;

  constructor(job: Job) {
    const e = job.error;
    super(
      Code.Unknown,
      {
        statusCode: e?.statusCode ?? job.statusCode ?? 500,
        type: e?.type ?? "api_error",
        code: e?.error?.code ?? "job_failed",
        message: e?.error?.message ?? `job ${job.id} did not complete`,
        param: e?.error?.param,
        eventId: e?.eventId,
      },
      e,
    );
    this.job = job;
  }
}

/** The job was not terminal when the wait's timeout passed; `job` is how it was last seen. */
export class WaitTimeoutError extends ImageJobsError {
  readonly job: Job | undefined;

  constructor(jobId: string, timeoutMs: number, job: Job | undefined) {
    super(Code.DeadlineExceeded, {
      statusCode: 504,
      type: "timeout_error",
      code: "wait_timeout",
      message: `job ${jobId} did not end within ${timeoutMs} ms`,
    });
    this.job = job;
  }
}

/** Our server's ErrorResponse in the error's details, if it sent one. */
export function serverDetail(err: ConnectError): ErrorResponse | undefined {
  return err.findDetails(ErrorResponseSchema)[0];
}

/** The client error for anything a call threw (a ConnectError, or something else). */
export function fromError(err: unknown): ImageJobsError {
  if (err instanceof ImageJobsError) {
    return err;
  }
  const ce = ConnectError.from(err);
  const detail = serverDetail(ce);
  if (detail !== undefined) {
    return new ImageJobsError(
      ce.code,
      {
        statusCode: detail.statusCode,
        type: detail.type,
        code: detail.error?.code ?? "",
        message: detail.error?.message ?? ce.rawMessage,
        param: detail.error?.param,
        eventId: detail.eventId,
      },
      detail,
      { cause: err },
    );
  }
  const statusCode = HTTP_STATUS[ce.code] ?? 500;
  const codeName = Code[ce.code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
  return new ImageJobsError(
    ce.code,
    {
      statusCode,
      type: statusCode === 503 ? "service_unavailable" : "api_error",
      code: codeName,
      message: ce.rawMessage || codeName,
    },
    undefined,
    { cause: err },
  );
}
