"""What every layer of the pod's runtime uses: its life (ready, draining), logs, metrics, devices, the handler's verbs,
and the checks every entry point runs first (settings, handler, model files)."""
