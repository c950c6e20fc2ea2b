//go:build tools

// Package tools pins istiod's main package so go.sum covers it.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
