//go:build tools

// Package tools pins kube-network-policies' main package so go.sum covers it.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
