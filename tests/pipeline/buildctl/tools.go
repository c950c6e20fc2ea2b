//go:build tools

// Package tools pins BuildKit: buildctl, which the pipeline tests and `make image` run with the
// image build jobs' own command lines, and buildkitd, the daemon they talk to (OCI worker, runc),
// both from this one module version.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
