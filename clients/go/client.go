// Package imagejobs is the Go client of imagejobs: the generated stubs (package
// imagejobsv1, from proto/ by `python scripts/gen_protos.py`) and Client, a thin helper
// over them that speaks gRPC to Envoy's port 8080 or to an API process directly.
//
//   - Submit: one idempotency key per logical submit, the same on every retry;
//   - Get and List: retried like Submit (reads are safe to repeat); Cancel: never retried;
//   - Watch: WatchJob, re-attached when its stream drops or ends before the job does;
//   - Wait: Watch until the job is terminal; Generate: Submit + Wait, its result;
//   - images the server did not inline (above 3 MiB, or response_format "url") are
//     fetched with StreamJobImage before Get, Watch, Wait and Generate return the job.
//
// Errors are *Error, carrying the contract's error body from the status detail.
package imagejobs

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"imagejobs/clients/go/imagejobsv1"
)

// DefaultTimeout is the deadline of one unary call of a client made without WithTimeout.
const DefaultTimeout = 30 * time.Second

const vkHeader = "x-bf-vk"

// Client is a client of one imagejobs server. Its methods are safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	stub    imagejobsv1.ImageJobServiceClient
	key     string
	timeout time.Duration
	retry   RetryPolicy
}

type settings struct {
	key     string
	timeout time.Duration
	retry   RetryPolicy
	dial    []grpc.DialOption
	creds   credentials.TransportCredentials
}

// Option configures a Client.
type Option func(*settings)

// WithKey sends a virtual key as x-bf-vk on every call (a job made with it is its alone).
func WithKey(key string) Option { return func(s *settings) { s.key = key } }

// WithTimeout sets the deadline of one unary call (default DefaultTimeout).
func WithTimeout(d time.Duration) Option { return func(s *settings) { s.timeout = d } }

// WithRetry sets how retryable failures are retried (default DefaultRetry).
func WithRetry(p RetryPolicy) Option { return func(s *settings) { s.retry = p } }

// WithTLS uses these transport credentials instead of plaintext.
func WithTLS(c credentials.TransportCredentials) Option { return func(s *settings) { s.creds = c } }

// WithDialOptions adds gRPC dial options (after the client's own).
func WithDialOptions(o ...grpc.DialOption) Option {
	return func(s *settings) { s.dial = append(s.dial, o...) }
}

// Dial makes a client of the server at target (host:port). It connects lazily: a server
// not there yet is retried per the retry policy at the first call.
func Dial(target string, opts ...Option) (*Client, error) {
	s := settings{timeout: DefaultTimeout, retry: DefaultRetry}
	for _, o := range opts {
		o(&s)
	}
	transport := grpc.WithInsecure()
	if s.creds != nil {
		transport = grpc.WithTransportCredentials(s.creds)
	}
	conn, err := grpc.Dial(target, append([]grpc.DialOption{transport}, s.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("imagejobs: dial %s: %w", target, err)
	}
	stub := imagejobsv1.NewImageJobServiceClient(conn)
	return &Client{conn: conn, stub: stub, key: s.key, timeout: s.timeout, retry: s.retry}, nil
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// Submit submits a job and returns it pending (or, for an idempotency key already used
// with the same request, the job that key made, as it is now). An empty IdempotencyKey
// gets a fresh one for this submit, sent unchanged on every retry; req is not modified.
func (c *Client) Submit(ctx context.Context, req *imagejobsv1.SubmitImageJobRequest) (*imagejobsv1.Job, error) {
	if req.GetIdempotencyKey() == "" {
		req = proto.Clone(req).(*imagejobsv1.SubmitImageJobRequest)
		req.IdempotencyKey = newUUID()
	}
	var job *imagejobsv1.Job
	err := c.unary(ctx, func(ctx context.Context) (err error) {
		job, err = c.stub.SubmitImageJob(ctx, req)
		return err
	})
	return job, err
}

// Get returns the job as it is now, with every result image's bytes.
func (c *Client) Get(ctx context.Context, jobID string) (*imagejobsv1.Job, error) {
	var job *imagejobsv1.Job
	err := c.unary(ctx, func(ctx context.Context) (err error) {
		job, err = c.stub.GetJob(ctx, &imagejobsv1.GetJobRequest{JobId: jobID})
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.complete(ctx, job)
}

// Cancel cancels a pending or processing job and returns it cancelled. A job already
// terminal is an *Error with StatusCode 409 (FailedPrecondition). Not retried.
func (c *Client) Cancel(ctx context.Context, jobID string) (*imagejobsv1.Job, error) {
	ctx, done := c.call(ctx, c.timeout)
	defer done()
	job, err := c.stub.CancelJob(ctx, &imagejobsv1.CancelJobRequest{JobId: jobID})
	return job, fromRPC(err)
}

// List returns the caller's jobs, newest first, paging through them from req (its
// Status, Kind, Limit as the page size and PageToken); at most limit jobs (0: all).
// Their images carry no bytes (Get a job for them).
func (c *Client) List(ctx context.Context, req *imagejobsv1.ListJobsRequest, limit int) ([]*imagejobsv1.Job, error) {
	page := proto.Clone(req).(*imagejobsv1.ListJobsRequest)
	var jobs []*imagejobsv1.Job
	for limit == 0 || len(jobs) < limit {
		var resp *imagejobsv1.ListJobsResponse
		err := c.unary(ctx, func(ctx context.Context) (err error) {
			resp, err = c.stub.ListJobs(ctx, page)
			return err
		})
		if err != nil {
			return jobs, err
		}
		jobs = append(jobs, resp.GetJobs()...)
		if page.PageToken = resp.GetNextPageToken(); page.PageToken == "" {
			break
		}
	}
	if limit > 0 && len(jobs) > limit {
		jobs = jobs[:limit]
	}
	return jobs, nil
}

// Generate submits a generation of req and waits for it (ctx bounds the wait): its
// result, every image with its bytes. A job that failed or was cancelled is a
// *JobFailedError.
func (c *Client) Generate(ctx context.Context, req *imagejobsv1.ImageRequest) (*imagejobsv1.JobResult, error) {
	job, err := c.Submit(ctx, &imagejobsv1.SubmitImageJobRequest{
		Kind:    imagejobsv1.JobKind_JOB_KIND_GENERATION,
		Request: req,
	})
	if err != nil {
		return nil, err
	}
	if job, err = c.Wait(ctx, job.GetId()); err != nil {
		return nil, err
	}
	if job.GetStatus() != imagejobsv1.JobStatus_JOB_STATUS_COMPLETED {
		return nil, &JobFailedError{Job: job, Err: failure(job)}
	}
	return job.GetResult(), nil
}

// call is ctx with the key's metadata and, when d > 0, a deadline d from now.
func (c *Client) call(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if c.key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, vkHeader, c.key)
	}
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

// unary runs one RPC (every try with its own deadline), retried per the policy.
func (c *Client) unary(ctx context.Context, rpc func(context.Context) error) error {
	return c.retry.do(ctx, func() error {
		ctx, done := c.call(ctx, c.timeout)
		defer done()
		return rpc(ctx)
	})
}

// failure is a failed or cancelled job's error as an *Error.
func failure(job *imagejobsv1.Job) *Error {
	if job.GetError() != nil {
		return bodyOf(0, job.GetError())
	}
	message := fmt.Sprintf("job %s ended %s", job.GetId(), job.GetStatus())
	return &Error{StatusCode: int(job.GetStatusCode()), Type: "api_error", Code: "job_failed", Message: message}
}

// newUUID is a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("imagejobs: no randomness: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
