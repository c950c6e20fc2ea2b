"""The deploy tool: apply a stage's manifests, wait for the rollout, say why it failed, roll back, stop grey.

    python -m podserve.tooling.deploy apply --stage grey [--manifests DIR] [--dry-run]
    python -m podserve.tooling.deploy status --stage hk
    python -m podserve.tooling.deploy rollback --stage hk
    python -m podserve.tooling.deploy delete --stage grey [--manifests DIR | --service NAME]

Exit status: 0 serving, 1 rollout failed (rolled back where the stage does that), 2 bad
input (with the fix), 3 refused (route collision, lock held, freeze window, an older
pipeline than what runs). See
docs/deploy.md. This package's `__init__` imports nothing heavy: `budget` is imported by
render, which must not need the Kubernetes client.
"""
