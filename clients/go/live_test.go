package imagejobs_test

// The client against a live stack at $IMAGEJOBS_TARGET (host:port: Envoy's gRPC port;
// clients/test.sh sets it), and at $IMAGEJOBS_API_TARGET (an API process directly) when
// that is set too. Each test uses a virtual key of its own.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"os"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	imagejobs "imagejobs/clients/go"
	"imagejobs/clients/go/imagejobsv1"
)

const (
	generation = imagejobsv1.JobKind_JOB_KIND_GENERATION
	testBudget = 60 * time.Second // one test, end to end
)

var keySeq int

func dial(t *testing.T, env string) (*imagejobs.Client, context.Context) {
	t.Helper()
	target := os.Getenv(env)
	if target == "" {
		if os.Getenv("CI") != "" && env == "IMAGEJOBS_TARGET" {
			t.Fatalf("%s is required in CI", env)
		}
		t.Skipf("%s is not set", env)
	}
	keySeq++
	key := fmt.Sprintf("sk-bf-go-%d-%d", time.Now().UnixNano(), keySeq)
	c, err := imagejobs.Dial(target, imagejobs.WithKey(key))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testBudget)
	t.Cleanup(func() {
		cancel()
		c.Close()
	})
	return c, ctx
}

func mockRequest(t *testing.T, prompt string, extra map[string]interface{}) *imagejobsv1.ImageRequest {
	t.Helper()
	req := &imagejobsv1.ImageRequest{Model: "mock/m", Prompt: prompt, Size: "8x8"}
	if extra != nil {
		s, err := structpb.NewStruct(extra)
		if err != nil {
			t.Fatal(err)
		}
		req.Extra = s
	}
	return req
}

// submitMock submits a generation of mockRequest(prompt, extra), or fails the test.
func submitMock(ctx context.Context, t *testing.T, c *imagejobs.Client, prompt string,
	extra map[string]interface{}) *imagejobsv1.Job {
	t.Helper()
	job, err := c.Submit(ctx, &imagejobsv1.SubmitImageJobRequest{Kind: generation, Request: mockRequest(t, prompt, extra)})
	if err != nil {
		t.Fatal(err)
	}
	return job
}

func TestSubmitThenWatchUntilCompleted(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	job := submitMock(ctx, t, c, "steps", map[string]interface{}{"mock_latency_ms": 300})
	if job.GetStatus() != imagejobsv1.JobStatus_JOB_STATUS_PENDING || job.GetKind() != generation {
		t.Fatalf("submitted: %v %v", job.GetStatus(), job.GetKind())
	}
	var states []imagejobsv1.JobStatus
	err := c.Watch(ctx, job.GetId(), func(seen *imagejobsv1.Job) error {
		states = append(states, seen.GetStatus())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	completed, processing := 0, false
	for _, s := range states {
		completed += map[bool]int{true: 1}[s == imagejobsv1.JobStatus_JOB_STATUS_COMPLETED]
		processing = processing || s == imagejobsv1.JobStatus_JOB_STATUS_PROCESSING
	}
	if states[len(states)-1] != imagejobsv1.JobStatus_JOB_STATUS_COMPLETED || completed != 1 || !processing {
		t.Fatalf("states: %v", states)
	}
	got, err := c.Get(ctx, job.GetId())
	if err != nil || len(got.GetResult().GetImages()) != 1 {
		t.Fatalf("get: %v %v", got, err)
	}
}

func TestGenerateReturnsPNGBytesThatDecode(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	result, err := c.Generate(ctx, &imagejobsv1.ImageRequest{Model: "mock/image-1", Prompt: "a red fox", Size: "40x30"})
	if err != nil {
		t.Fatal(err)
	}
	image := result.GetImages()[0]
	if image.GetMimeType() != "image/png" || image.GetSizeBytes() != int64(len(image.GetData())) {
		t.Fatalf("image: %s, %d bytes of %d", image.GetMimeType(), len(image.GetData()), image.GetSizeBytes())
	}
	decoded, err := png.Decode(bytes.NewReader(image.GetData()))
	if err != nil {
		t.Fatal(err)
	}
	if size := decoded.Bounds().Size(); size.X != 40 || size.Y != 30 {
		t.Fatalf("decoded %v, asked 40x30", size)
	}
	if extra := result.GetExtraFields(); extra.GetProvider() != "mock" || extra.GetModelRequested() != "image-1" {
		t.Fatalf("extra fields: %v", extra)
	}
}

func TestA400CarriesTheTypedErrorDetail(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	_, err := c.Submit(ctx, &imagejobsv1.SubmitImageJobRequest{
		Kind: generation, Request: &imagejobsv1.ImageRequest{Model: "mock/image-1"},
	})
	var e *imagejobs.Error
	if !errors.As(err, &e) {
		t.Fatalf("not an *imagejobs.Error: %#v", err)
	}
	if e.GRPCCode != codes.InvalidArgument || e.StatusCode != 400 || e.Type != "invalid_request_error" ||
		e.Code != "invalid_request" || e.Param != "prompt" || e.Message != "prompt cannot be empty" {
		t.Fatalf("error: %+v", e)
	}
	if e.Detail == nil || !e.Detail.GetIsBifrostError() {
		t.Fatalf("no ErrorResponse detail: %+v", e)
	}
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(e.EventID) {
		t.Fatalf("event id %q", e.EventID)
	}
}

func TestCancelEndsARunningJobAndASecondCancelIs409(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	job := submitMock(ctx, t, c, "slow", map[string]interface{}{"mock_latency_ms": 20000})
	cancelled, err := c.Cancel(ctx, job.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if cancelled.GetStatus() != imagejobsv1.JobStatus_JOB_STATUS_CANCELLED || cancelled.GetStatusCode() != 499 ||
		cancelled.GetError().GetError().GetCode() != "cancelled" {
		t.Fatalf("cancelled: %v", cancelled)
	}
	waitCtx, done := context.WithTimeout(ctx, 10*time.Second)
	defer done()
	if waited, err := c.Wait(waitCtx, job.GetId()); err != nil || waited.GetStatus() != imagejobsv1.JobStatus_JOB_STATUS_CANCELLED {
		t.Fatalf("wait: %v %v", waited, err)
	}
	_, err = c.Cancel(ctx, job.GetId())
	var e *imagejobs.Error
	if !errors.As(err, &e) || e.GRPCCode != codes.FailedPrecondition || e.StatusCode != 409 {
		t.Fatalf("second cancel: %#v", err)
	}
}

func TestGenerateOfACancelledJobIsAJobFailedError(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	failed := make(chan error, 1)
	go func() {
		_, err := c.Generate(ctx, mockRequest(t, "slow", map[string]interface{}{"mock_latency_ms": 20000}))
		failed <- err
	}()
	var jobs []*imagejobsv1.Job
	for deadline := time.Now().Add(5 * time.Second); len(jobs) == 0 && time.Now().Before(deadline); {
		jobs, _ = c.List(ctx, &imagejobsv1.ListJobsRequest{}, 1)
		time.Sleep(50 * time.Millisecond)
	}
	if len(jobs) == 0 {
		t.Fatal("the job was not listed within 5 s")
	}
	if _, err := c.Cancel(ctx, jobs[0].GetId()); err != nil {
		t.Fatal(err)
	}
	err := <-failed
	var jf *imagejobs.JobFailedError
	if !errors.As(err, &jf) || jf.Job.GetStatus() != imagejobsv1.JobStatus_JOB_STATUS_CANCELLED || jf.Err.Code != "cancelled" {
		t.Fatalf("generate: %#v", err)
	}
}

func TestWaitPastItsDeadlineReturnsTheJobAsLastSeen(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	job := submitMock(ctx, t, c, "slow", map[string]interface{}{"mock_latency_ms": 20000})
	short, done := context.WithTimeout(ctx, 300*time.Millisecond)
	defer done()
	last, err := c.Wait(short, job.GetId())
	var e *imagejobs.Error
	if !errors.As(err, &e) || e.GRPCCode != codes.DeadlineExceeded || last == nil || imagejobs.Terminal(last) {
		t.Fatalf("wait: %v %#v", last, err)
	}
	if _, err := c.Cancel(ctx, job.GetId()); err != nil {
		t.Fatal(err)
	}
}

func TestListPagesNewestFirstAndOneKeyMakesOneJob(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_TARGET")
	first := submitMock(ctx, t, c, "one", nil)
	keyed := &imagejobsv1.SubmitImageJobRequest{Kind: generation, Request: mockRequest(t, "two", nil), IdempotencyKey: "k-1"}
	second, err := c.Submit(ctx, keyed)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := c.Submit(ctx, keyed); err != nil || again.GetId() != second.GetId() {
		t.Fatalf("the same key again: %v %v", again, err)
	}
	jobs, err := c.List(ctx, &imagejobsv1.ListJobsRequest{Limit: 1}, 0) // one per page
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].GetId() != second.GetId() || jobs[1].GetId() != first.GetId() {
		t.Fatalf("listed %v", jobs)
	}
}

func TestTheAPIProcessDirectly(t *testing.T) {
	c, ctx := dial(t, "IMAGEJOBS_API_TARGET")
	result, err := c.Generate(ctx, &imagejobsv1.ImageRequest{Model: "mock/image-1", Prompt: "direct", Size: "16x16"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(result.GetImages()[0].GetData())); err != nil {
		t.Fatal(err)
	}
}
