"""KEDA on the test control plane: its operator and metrics API server built from Go modules, run as processes."""
