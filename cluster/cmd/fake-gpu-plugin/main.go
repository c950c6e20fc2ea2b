// Command fake-gpu-plugin advertises GPUs that do not exist to the kubelet, over its real
// device-plugin API (v1beta1), with the Kubernetes module's own plugin stub.
//
// The real node of the local cluster has no GPU: this plugin lets manifests that request
// nvidia.com/gpu schedule there unchanged (the server then runs on its CPU fallback). It is the
// node's only stand-in, and it says so in each allocation's environment (PODSERVE_FAKE_GPU=1).
//
//	fake-gpu-plugin --count 4 [--resource nvidia.com/gpu] [--socket-dir /var/lib/kubelet/device-plugins/]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

// registerAttempts bounds the start-and-register attempts (one second apart).
const registerAttempts = 30

func main() {
	count := flag.Int("count", 4, "how many devices to advertise (at least 1)")
	resource := flag.String("resource", "nvidia.com/gpu", "the extended resource name")
	dir := flag.String("socket-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin folder")
	flag.Parse()
	if *count < 1 {
		fmt.Fprintln(os.Stderr, "Error: --count must be at least 1")
		os.Exit(2)
	}
	devices := make([]*pluginapi.Device, *count)
	ids := make([]string, *count)
	for i := range devices {
		ids[i] = fmt.Sprintf("fake-gpu-%d", i)
		devices[i] = &pluginapi.Device{ID: ids[i], Health: pluginapi.Healthy}
	}
	logger := klog.Background()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	socket := filepath.Join(*dir, "podserve-fake-gpu.sock")
	kubelet := filepath.Join(*dir, "kubelet.sock")
	stub, err := serveAndRegister(ctx, logger, func() *plugin.Stub {
		return plugin.NewDevicePluginStub(logger, devices, socket, *resource, false, false)
	}, kubelet, *resource, *dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: registering %s with the kubelet on %s: %v\n", *resource, socket, err)
		os.Exit(1)
	}
	// Watch re-registers when the kubelet restarts (its socket is re-created).
	go stub.Watch(ctx, kubelet, *resource, *dir)
	fmt.Printf("advertising %d x %s (fake: no GPU behind them) on %s\n", *count, *resource, socket)
	<-ctx.Done()
	_ = stub.Stop(logger)
}

// serveAndRegister starts a fresh stub serving on its socket and registers it with the kubelet, a bounded number
// of times, one second apart. Either step can fail on a node coming up: the kubelet's device manager empties its
// plugin folder when it starts, taking a socket made before with it (the stub's dial of its own socket then
// times out), and a busy kubelet may fail to dial back in time (it drops the registration and the stub stops
// serving). A failed stub is stopped, its socket removed, and the next attempt starts from a fresh one.
func serveAndRegister(ctx context.Context, logger klog.Logger, newStub func() *plugin.Stub,
	kubelet, resource, dir string) (*plugin.Stub, error) {
	var err error
	for attempt := 1; attempt <= registerAttempts; attempt++ {
		stub := newStub()
		stub.SetAllocFunc(allocate)
		if err = stub.Start(ctx); err == nil {
			if err = stub.Register(ctx, kubelet, resource, dir); err == nil {
				return stub, nil
			}
		}
		// Stopped in the background: a Start that failed at its folder's watch has counted a server goroutine it
		// never started, and Stop would wait for it for ever. Stop is done long before the next attempt's second.
		go func() { _ = stub.Stop(logger) }()
		fmt.Fprintf(os.Stderr, "attempt %d of %d: %v\n", attempt, registerAttempts, err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return nil, err
}

// allocate answers the kubelet's allocation of fake devices: no device nodes, only the environment that says so.
func allocate(r *pluginapi.AllocateRequest, _ map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
	response := &pluginapi.AllocateResponse{}
	for _, request := range r.ContainerRequests {
		response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"PODSERVE_FAKE_GPU": "1",
				"PODSERVE_FAKE_GPU_IDS": strings.Join(request.DevicesIds, ",")}})
	}
	return response, nil
}
