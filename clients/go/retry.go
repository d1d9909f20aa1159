package imagejobs

import (
	"context"
	"math/rand"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy says how calls are retried. A call that fails with UNAVAILABLE, or whose
// stream dropped before our server answered (INTERNAL or UNKNOWN without its error
// detail), is tried again after a jittered exponential backoff. Reads are safe to repeat;
// a submit is made safe by its idempotency key, the same on every try, so a retried
// submit never makes a second job. A cancel is never retried (its first try may have
// worked).
//
// Attempts counts the first try; the wait before retry n (1, 2, …) is
// InitialBackoff * 2^(n-1), at most MaxBackoff, jittered down to half; no retry starts
// later than MaxElapsed after the first try. Attempts 1 turns retries off.
type RetryPolicy struct {
	Attempts       int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	MaxElapsed     time.Duration
}

// DefaultRetry is the policy of a client made without WithRetry.
var DefaultRetry = RetryPolicy{
	Attempts:       5,
	InitialBackoff: 250 * time.Millisecond,
	MaxBackoff:     3 * time.Second,
	MaxElapsed:     30 * time.Second,
}

// Backoff is the wait before retry number n (1-based).
func (p RetryPolicy) Backoff(n int) time.Duration {
	full := p.InitialBackoff << uint(n-1)
	if full > p.MaxBackoff || full <= 0 {
		full = p.MaxBackoff
	}
	return time.Duration(float64(full) * (0.5 + rand.Float64()/2))
}

// retryable says whether a failed call may be tried again (see RetryPolicy).
func retryable(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable:
		return true
	case codes.Internal, codes.Unknown:
		return serverDetail(st) == nil
	}
	return false
}

// do runs attempt until it succeeds, fails in a way not retryable, or the policy's
// attempts or time run out (or ctx ends); the last error is returned as an *Error.
func (p RetryPolicy) do(ctx context.Context, attempt func() error) error {
	started := time.Now()
	for tries := 1; ; tries++ {
		err := attempt()
		if err == nil {
			return nil
		}
		wait := p.Backoff(tries)
		late := time.Since(started)+wait > p.MaxElapsed
		if !retryable(err) || tries >= p.Attempts || late {
			return fromRPC(err)
		}
		if sleepErr := sleep(ctx, wait); sleepErr != nil {
			return fromRPC(err)
		}
	}
}

// sleep waits d, or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
