// The Go client of imagejobs: package imagejobs (the helper) and imagejobsv1 (generated
// by `python scripts/gen_protos.py`; never edit it).
//
// The versions below are the ones it is built and tested with here: Debian bookworm's
// packages (golang-google-grpc-dev, golang-google-protobuf-dev, golang-google-genproto-dev,
// golang-github-golang-protobuf-1-5-dev, golang-golang-x-*-dev), which .ci/run installs.
// These machines reach no Go module proxy, so clients/test.sh builds in GOPATH mode
// against those packages and there is no go.sum; where the proxy is reachable,
// `go mod tidy` writes it.
module imagejobs/clients/go

go 1.19

require (
	google.golang.org/genproto v0.0.0-20200413115906-b5235f65be36
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.3.0 // indirect
	golang.org/x/text v0.7.0 // indirect
)
