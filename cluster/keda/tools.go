//go:build tools

// Package tools pins KEDA's operator and metrics API server so go.sum covers them.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
