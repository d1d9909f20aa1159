"""The API side: the gRPC server Envoy transcodes REST onto. It validates, records and
enqueues jobs and reads them back; it never calls a provider.

    server.py       the API process (grpc.aio server, health, reflection, shutdown)
    servicer.py     the thin gRPC adapter: metadata -> validated request -> service -> wire
    interceptor.py  the one place errors meet the wire (google.rpc.Status + ErrorResponse)
    auth.py         who is calling (virtual keys) and which jobs they may see
    requests.py     JSON / multipart / typed bodies -> one validated ImageRequest
    lifecycle.py    the model catalogue at submit: retired models refused, deprecated warned
    uploads.py      multipart parsing and uploaded images
    service.py      JobService: submit (the order that makes a 202 safe) and cancel
    governance.py   at submit: the per-key queue bound, the budget reservation; usage
    usage.py        GetUsage / GET /v1/async/images/usage (typed and REST)
    reads.py        JobReader: get, image, wait, watch, list, lazy expiry and orphan repair
    fields.py       kind / status parsing for REST text and typed enums
    messages.py     records -> the typed gRPC messages (Job, JobResult, WebhookDelivery)
    render.py       records -> the REST JSON (jobs, lists, deliveries) and error messages
    models.py       the model listing (ListModels, GET /v1/async/images/models)
    console_reads.py  the console's reads: a job's request (GetSubmission), queue stats (GetStats)
"""
