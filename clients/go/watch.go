package imagejobs

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"imagejobs/clients/go/imagejobsv1"
)

// Terminal says whether the job has ended (completed, failed or cancelled: it never
// changes again).
func Terminal(job *imagejobsv1.Job) bool {
	switch job.GetStatus() {
	case imagejobsv1.JobStatus_JOB_STATUS_COMPLETED,
		imagejobsv1.JobStatus_JOB_STATUS_FAILED,
		imagejobsv1.JobStatus_JOB_STATUS_CANCELLED:
		return true
	}
	return false
}

// Watch calls each with the job now, then with each change, and returns nil after the
// terminal state (or each's error, or ctx's). It re-attaches, per the retry policy, when
// the stream drops or the API process shuts down before the job ends.
func (c *Client) Watch(ctx context.Context, jobID string, each func(*imagejobsv1.Job) error) error {
	var last *imagejobsv1.Job
	for retries := 0; ; {
		seen, err := c.watchOnce(ctx, jobID, &last, each)
		if err == nil && last != nil && Terminal(last) {
			return nil
		}
		if cb, ok := err.(*callbackError); ok {
			return cb.err
		}
		if err != nil && (!retryable(err) || ctx.Err() != nil) {
			return fromRPC(err)
		}
		if seen {
			retries = 0
		}
		retries++ // the stream failed, or ended before the job did
		if retries >= c.retry.Attempts {
			if err == nil {
				err = &Error{GRPCCode: codes.Unavailable, StatusCode: 503, Type: "service_unavailable",
					Code: "unavailable", Message: fmt.Sprintf("the watch of job %s kept ending early", jobID)}
			}
			return fromRPC(err)
		}
		if sleep(ctx, c.retry.Backoff(retries)) != nil {
			return fromRPC(status.FromContextError(ctx.Err()).Err())
		}
	}
}

// watchOnce is one WatchJob stream: each state not seen yet (last) goes to each, until
// the terminal one. It says whether it saw a new state.
func (c *Client) watchOnce(ctx context.Context, jobID string, last **imagejobsv1.Job,
	each func(*imagejobsv1.Job) error) (bool, error) {
	ctx, done := c.call(ctx, 0)
	defer done()
	stream, err := c.stub.WatchJob(ctx, &imagejobsv1.WatchJobRequest{JobId: jobID})
	if err != nil {
		return false, err
	}
	seen := false
	for {
		job, err := stream.Recv()
		if err == io.EOF {
			return seen, nil
		}
		if err != nil {
			return seen, err
		}
		if *last != nil && proto.Equal(job, *last) {
			continue // a re-attach starts with the state already seen
		}
		*last, seen = job, true
		if job, err = c.complete(ctx, job); err != nil {
			return seen, err
		}
		if err := each(job); err != nil {
			return seen, &callbackError{err}
		}
		if Terminal(job) {
			return seen, nil
		}
	}
}

// callbackError carries each's own error through Watch unchanged.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// Wait returns the job once terminal, through WatchJob (no polling). When ctx ends first
// it returns the job as last seen (nil if none) with an *Error (DeadlineExceeded for a
// deadline).
func (c *Client) Wait(ctx context.Context, jobID string) (*imagejobsv1.Job, error) {
	var last *imagejobsv1.Job
	err := c.Watch(ctx, jobID, func(job *imagejobsv1.Job) error {
		last = job
		return nil
	})
	return last, err
}

// Image returns one result image's bytes, streamed in chunks of at most 1 MiB.
func (c *Client) Image(ctx context.Context, jobID string, index int32) ([]byte, error) {
	var data []byte
	err := c.unary(ctx, func(ctx context.Context) error {
		stream, err := c.stub.StreamJobImage(ctx, &imagejobsv1.StreamJobImageRequest{JobId: jobID, Index: index})
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		size := int64(0)
		for {
			chunk, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if chunk.GetOffset() != int64(buf.Len()) {
				return brokenStream(jobID, index, "chunks out of order")
			}
			buf.Write(chunk.GetData())
			size = chunk.GetSizeBytes()
		}
		if int64(buf.Len()) != size {
			return brokenStream(jobID, index, fmt.Sprintf("%d of %d bytes", buf.Len(), size))
		}
		data = buf.Bytes()
		return nil
	})
	return data, err
}

// complete returns the job with the bytes of every result image the server did not
// inline (a copy: the message as received is left alone).
func (c *Client) complete(ctx context.Context, job *imagejobsv1.Job) (*imagejobsv1.Job, error) {
	var missing []int
	for i, image := range job.GetResult().GetImages() {
		if len(image.GetData()) == 0 && image.GetSizeBytes() > 0 {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return job, nil
	}
	job = proto.Clone(job).(*imagejobsv1.Job)
	for _, i := range missing {
		image := job.Result.Images[i]
		data, err := c.Image(ctx, job.GetId(), image.GetIndex())
		if err != nil {
			return nil, err
		}
		image.Data = data
	}
	return job, nil
}

func brokenStream(jobID string, index int32, why string) *Error {
	return &Error{GRPCCode: codes.Internal, StatusCode: 502, Type: "api_error", Code: "bad_image_stream",
		Message: fmt.Sprintf("job %s image %d: %s", jobID, index, why)}
}
