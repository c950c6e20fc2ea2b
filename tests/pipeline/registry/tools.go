//go:build tools

// Package tools pins the container registry (distribution's cmd/registry) that `make image` and the
// pipeline tests push the images to: a real registry with htpasswd authentication, on loopback.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
