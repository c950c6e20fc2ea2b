// Command pause is the real node's pod sandbox process: it holds the pod's namespaces and
// does nothing else until SIGINT or SIGTERM (what Kubernetes' own pause.c does), reaping any
// child re-parented to it. Built here because no image registry is reachable to pull
// registry.k8s.io/pause; the node imports it as a one-layer image (podserve.testbed.cluster.node).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
