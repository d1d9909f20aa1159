"""Defaults and fixed limits, with their units in their names."""

from __future__ import annotations

DEFAULT_RESULT_TTL_S = 3600  # the contract's default result lifetime after completion
MAX_RESULT_TTL_S = 30 * 24 * 3600  # a larger requested TTL is capped to this
PENDING_TTL_S = 7 * 24 * 3600  # safety TTL of non-terminal job records and uploads
UPLOAD_TTL_S = 2 * 24 * 3600  # uploaded images: the job's whole life
CHUNK_EXTRA_TTL_S = 60  # image chunks outlive their meta record by this much

PROVIDER_TIMEOUT_S = 300.0  # one upstream call: image models take minutes
JOB_TIMEOUT_S = 900.0  # a whole job incl. retries and fallbacks
ACK_WAIT_S = 30.0  # JetStream redelivers an un-acked job after this
MAX_DELIVERIES = 5  # deliveries of one job before it is failed for good
DUPLICATE_WINDOW_S = 120.0  # JetStream dedupe window for Nats-Msg-Id

CHUNK_BYTES = 512 * 1024  # object-store chunk size, well under nats-server's 1 MiB max_payload
MAX_GRPC_MESSAGE_BYTES = 128 * 1024 * 1024  # uploads and b64 results of several MB

JOBS_BUCKET = "JOBS"  # KV bucket of job records (stream KV_JOBS)
QUEUE_STREAM = "JOBQ"  # WorkQueue stream of jobs to run
QUEUE_SUBJECT_PREFIX = "imagejobs.run"  # imagejobs.run.<job_id>
WORKER_CONSUMER = "workers"
STATE_SUBJECT_PREFIX = "imagejobs.state"  # every KV write republished here (waiters)
OBJECT_STREAM = "IMAGES"
OBJECT_SUBJECT_PREFIX = "imagejobs.obj"  # .meta.<id> and .chunk.<id>

DEFAULT_MAX_PROMPT_CHARS = 32_000
MAX_N = 10
MAX_IMAGES = 16
