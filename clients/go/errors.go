package imagejobs

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"imagejobs/clients/go/imagejobsv1"
)

// Error is a failed call. Its fields are the contract's error body, which our server
// sends as the imagejobs.v1.ErrorResponse detail of its google.rpc.Status (the
// grpc-status-details-bin trailer); a failure that never reached our server (a refused
// connection, a proxy's answer) gets a body made from its gRPC code, and Detail nil.
type Error struct {
	GRPCCode   codes.Code // the call's gRPC status code
	StatusCode int        // the HTTP status REST answers with, e.g. 400
	Type       string     // e.g. invalid_request_error
	Code       string     // e.g. invalid_request, job_not_found
	Message    string     // e.g. prompt cannot be empty
	Param      string     // the request field at fault, when one is
	EventID    string     // this occurrence, as in the server's logs
	Detail     *imagejobsv1.ErrorResponse
}

func (e *Error) Error() string {
	return fmt.Sprintf("imagejobs: %d %s: %s", e.StatusCode, e.Code, e.Message)
}

// JobFailedError says the job ended failed or cancelled (Generate); Job is the terminal
// job and Err its error.
type JobFailedError struct {
	Job *imagejobsv1.Job
	Err *Error
}

func (e *JobFailedError) Error() string { return e.Err.Error() }

// Unwrap gives errors.As the job's *Error.
func (e *JobFailedError) Unwrap() error { return e.Err }

// httpStatus maps a gRPC code to the HTTP status our server maps it from.
var httpStatus = map[codes.Code]int{
	codes.Unavailable:        503,
	codes.Unauthenticated:    401,
	codes.PermissionDenied:   403,
	codes.InvalidArgument:    400,
	codes.NotFound:           404,
	codes.FailedPrecondition: 409,
	codes.AlreadyExists:      409,
	codes.ResourceExhausted:  429,
	codes.DeadlineExceeded:   504,
}

// serverDetail is our server's ErrorResponse from the call's status details, or nil.
func serverDetail(st *status.Status) *imagejobsv1.ErrorResponse {
	for _, detail := range st.Proto().GetDetails() {
		var body imagejobsv1.ErrorResponse
		if (*anypb.Any)(detail).UnmarshalTo(&body) == nil {
			return &body
		}
	}
	return nil
}

// bodyOf is the contract's error body as an *Error.
func bodyOf(code codes.Code, body *imagejobsv1.ErrorResponse) *Error {
	return &Error{
		GRPCCode:   code,
		StatusCode: int(body.GetStatusCode()),
		Type:       body.GetType(),
		Code:       body.GetError().GetCode(),
		Message:    body.GetError().GetMessage(),
		Param:      body.GetError().GetParam(),
		EventID:    body.GetEventId(),
		Detail:     body,
	}
}

// fromRPC translates what a call returned into an *Error (nil stays nil).
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ours := err.(*Error); ours {
		return err
	}
	st := status.Convert(err)
	if detail := serverDetail(st); detail != nil {
		return bodyOf(st.Code(), detail)
	}
	statusCode, ok := httpStatus[st.Code()]
	if !ok {
		statusCode = 500
	}
	kind := "api_error"
	if statusCode == 503 {
		kind = "service_unavailable"
	}
	name := snake(st.Code().String())
	message := st.Message()
	if message == "" {
		message = name
	}
	return &Error{GRPCCode: st.Code(), StatusCode: statusCode, Type: kind, Code: name, Message: message}
}

// snake turns a gRPC code's name (DeadlineExceeded) into the contract's (deadline_exceeded).
func snake(name string) string {
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}
