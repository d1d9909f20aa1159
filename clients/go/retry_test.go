package imagejobs_test

// Retries, against an in-process fake server on loopback: a submit that meets
// UNAVAILABLE is tried again with the same idempotency key; an error with our detail is
// not retried, and is decoded; a cancel is never retried.

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	imagejobs "imagejobs/clients/go"
	"imagejobs/clients/go/imagejobsv1"
)

var fast = imagejobs.RetryPolicy{Attempts: 5, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxElapsed: 5 * time.Second}

type fake struct {
	imagejobsv1.UnimplementedImageJobServiceServer
	mu      sync.Mutex
	keys    []string
	cancels int
	fail    func(n int) error // the error of the n-th submit (1-based), nil to answer
}

func (f *fake) SubmitImageJob(_ context.Context, req *imagejobsv1.SubmitImageJobRequest) (*imagejobsv1.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, req.GetIdempotencyKey())
	if err := f.fail(len(f.keys)); err != nil {
		return nil, err
	}
	return &imagejobsv1.Job{Id: "job-1", Status: imagejobsv1.JobStatus_JOB_STATUS_PENDING}, nil
}

func (f *fake) CancelJob(context.Context, *imagejobsv1.CancelJobRequest) (*imagejobsv1.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels++
	return nil, status.Error(codes.Unavailable, "down")
}

func serve(t *testing.T, f *fake) (*imagejobs.Client, context.Context) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	imagejobsv1.RegisterImageJobServiceServer(server, f)
	go server.Serve(lis)
	c, err := imagejobs.Dial(lis.Addr().String(), imagejobs.WithRetry(fast))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(func() {
		cancel()
		c.Close()
		server.Stop()
	})
	return c, ctx
}

func submit(ctx context.Context, c *imagejobs.Client) (*imagejobsv1.Job, error) {
	return c.Submit(ctx, &imagejobsv1.SubmitImageJobRequest{
		Kind:    imagejobsv1.JobKind_JOB_KIND_GENERATION,
		Request: &imagejobsv1.ImageRequest{Model: "mock/m", Prompt: "p"},
	})
}

func TestASubmitRetriedAfterUnavailableSendsOneKey(t *testing.T) {
	f := &fake{fail: func(n int) error {
		if n%3 != 0 { // each logical submit: two UNAVAILABLEs, then an answer
			return status.Error(codes.Unavailable, "no healthy upstream")
		}
		return nil
	}}
	c, ctx := serve(t, f)
	if job, err := submit(ctx, c); err != nil || job.GetId() != "job-1" {
		t.Fatalf("submit: %v %v", job, err)
	}
	if _, err := submit(ctx, c); err != nil {
		t.Fatal(err)
	}
	k := f.keys
	if len(k) != 6 || k[0] == "" || k[0] != k[1] || k[1] != k[2] || k[3] != k[4] || k[4] != k[5] || k[0] == k[3] {
		t.Fatalf("keys per try: %q", k)
	}
}

func TestAnErrorWithOurDetailIsNotRetriedAndIsDecoded(t *testing.T) {
	f := &fake{fail: func(int) error {
		// another detail first: the client must look past it for ours
		st, err := status.New(codes.Internal, "bad").WithDetails(&errdetails.RetryInfo{}, &imagejobsv1.ErrorResponse{
			Type: "invalid_request_error", StatusCode: 400, IsBifrostError: true,
			Error: &imagejobsv1.ErrorDetail{Code: "invalid_request", Message: "bad", Param: "size"},
		})
		if err != nil {
			panic(err)
		}
		return st.Err()
	}}
	c, ctx := serve(t, f)
	_, err := submit(ctx, c)
	var e *imagejobs.Error
	if !errors.As(err, &e) || len(f.keys) != 1 || e.StatusCode != 400 || e.Param != "size" || e.Detail == nil {
		t.Fatalf("tries %d: %#v", len(f.keys), err)
	}
}

func TestRetriesStopAfterThePolicysAttemptsAndCancelIsNeverRetried(t *testing.T) {
	f := &fake{fail: func(int) error { return status.Error(codes.Unavailable, "down") }}
	c, ctx := serve(t, f)
	_, err := submit(ctx, c)
	var e *imagejobs.Error
	if !errors.As(err, &e) || e.GRPCCode != codes.Unavailable || e.StatusCode != 503 || len(f.keys) != 5 {
		t.Fatalf("tries %d: %#v", len(f.keys), err)
	}
	if _, err := c.Cancel(ctx, "job-1"); err == nil || f.cancels != 1 {
		t.Fatalf("cancel tries %d: %v", f.cancels, err)
	}
}
