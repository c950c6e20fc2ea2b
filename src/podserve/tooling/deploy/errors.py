"""The deploy tool's errors, each carrying its exit status: library code raises, only the CLI exits."""

from __future__ import annotations

from podserve.tooling.deploy import failures


class DeployError(Exception):
    """A deploy that cannot go on; `exit_code` is what the CLI returns."""

    exit_code = failures.EXIT_FAILED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(DeployError):
    """Bad value.py, missing manifests, no credentials, a stage that does not exist: the message says the fix."""

    exit_code = failures.EXIT_BAD_INPUT


class Refused(DeployError):
    """The deploy was refused before anything changed (route collision, lock held, freeze window)."""

    exit_code = failures.EXIT_REFUSED

    def __init__(self, failure: failures.Failure, detail: str):
        super().__init__(failure.say(detail))
        self.failure = failure


class OutdatedPipeline(Refused):
    """A production deploy from a pipeline older than the one that deployed what runs (an old pipeline's job retried),
    refused before anything changed: the message names both pipelines and the ways back (`rollback`, a revert)."""

    def __init__(self, detail: str):
        super().__init__(failures.OUTDATED_PIPELINE, detail)


class ClusterError(DeployError):
    """The API server answered with an error (or could not be reached); carries its HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        if status in (401, 403) and "ValidatingAdmissionPolicy" in message:
            self.exit_code = failures.EXIT_BAD_INPUT
            self.message = (f"{message}. The platform's admission policy named above refused it "
                            "(docs/tenancy.md lists each policy and what it allows)")
        elif status in (401, 403):
            self.exit_code = failures.EXIT_BAD_INPUT
            self.message = (f"{message}. The credentials in KUBECONFIG lack this permission: deploy with your "
                            "team's account of the platform chart (charts/podserve-platform: podserve-<team>-preview "
                            "for grey and ab, podserve-<team>-production for the rest; docs/tenancy.md), whose RBAC "
                            "covers exactly what this tool does, in the team's own namespaces")


class LockLost(DeployError):
    """The deploy's Lease was taken over (or could not be renewed): the deploy stops and leaves the stage alone."""


class RollbackIncomplete(DeployError):
    """A rollback an API error or SIGTERM stopped before it ended: `restored` names the objects put back (or pruned),
    `left` those still as the rolled-back revision applied them; the message says what runs and the command that
    finishes the rollback."""

    def __init__(self, message: str, cause: str, restored: list[str], left: list[str]):
        super().__init__(message)
        self.cause, self.restored, self.left = cause, restored, left


class Terminated(BaseException):
    """SIGTERM reached the tool (a cancelled or timed-out CI job); raised in the main thread, wherever it was.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__(signal_name)
        self.message = f"{signal_name}: the job was cancelled or timed out"


class NotDeployedHere(DeployError):
    """The service does not run in this stage (value.py `regions`): the job ends at once, successfully."""

    exit_code = failures.EXIT_SERVING
