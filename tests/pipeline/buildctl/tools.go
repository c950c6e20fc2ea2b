//go:build tools

// Package tools pins BuildKit's buildctl, which the pipeline tests run (make buildctl) to parse the
// image build jobs' command lines with the real CLI. Only the daemon is missing here.
package tools

import _ "github.com/moby/buildkit/cmd/buildctl"
