"""Argo Rollouts in the test bed: its controller and kubectl plugin built from Go modules, run against the control
plane."""
