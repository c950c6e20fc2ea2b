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

	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	plugin "k8s.io/kubernetes/pkg/kubelet/cm/devicemanager/plugin/v1beta1"
)

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
	stub := plugin.NewDevicePluginStub(logger, devices, socket, *resource, false, false)
	stub.SetAllocFunc(func(r *pluginapi.AllocateRequest, _ map[string]*pluginapi.Device) (*pluginapi.AllocateResponse, error) {
		response := &pluginapi.AllocateResponse{}
		for _, request := range r.ContainerRequests {
			response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
				Envs: map[string]string{"PODSERVE_FAKE_GPU": "1",
					"PODSERVE_FAKE_GPU_IDS": strings.Join(request.DevicesIds, ",")}})
		}
		return response, nil
	})
	if err := stub.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "Error: starting the plugin's server on %s: %v\n", socket, err)
		os.Exit(1)
	}
	// Watch re-registers when the kubelet restarts (its socket is re-created).
	go stub.Watch(ctx, filepath.Join(*dir, "kubelet.sock"), *resource, *dir)
	if err := stub.Register(ctx, filepath.Join(*dir, "kubelet.sock"), *resource, *dir); err != nil {
		fmt.Fprintf(os.Stderr, "Error: registering %s with the kubelet: %v\n", *resource, err)
		os.Exit(1)
	}
	fmt.Printf("advertising %d x %s (fake: no GPU behind them) on %s\n", *count, *resource, socket)
	<-ctx.Done()
	_ = stub.Stop(logger)
}
