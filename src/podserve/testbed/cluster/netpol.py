"""kube-network-policies, the NetworkPolicy engine of the real node: its build from Go modules, and its agent.

    python -m podserve.testbed.cluster.netpol [--tools DIR]     (default: ~/.cache/podserve, machine_cache.py)

    agent = Agent.start(plane, workdir, node_name, run)    # run(name, argv, env) -> Program: the node's own runner
    agent.wait_enforcing(["10.245.0.7"])                   # those pods' first packets now go to the agent
    agent.stop()

The build: sigs.k8s.io/kube-network-policies at the version cluster/netpol/go.mod pins (its own module: it needs
k8s.io/* v0.32), verified against that go.sum, with one patch (cluster/netpol/nfqueue-compat.patch): its rules hand
a connection's first packet to the agent through the xtables NFQUEUE target, because this kernel has no nftables
`queue` expression (CONFIG_NFT_QUEUE unset: the agent's whole table would be refused). Go refuses to overlay files of
the module cache, so the module is copied aside, patched and built with a replace line. The binary goes to
<DIR>/netpol/kube-network-policies-<version>_<digest of go.mod, go.sum, tools.go and the patch>/. GOTOOLCHAIN=local,
CGO_ENABLED=0.

The agent: upstream's own command, as its DaemonSet runs it (install.yaml: its ServiceAccount and ClusterRole, the
node's name, fail closed), but as a process of this machine in the node's network namespace (the host's). Its
command only knows the in-cluster configuration, so it runs in a mount namespace of its own where a token of its
ServiceAccount (TokenRequest) and the cluster's CA are mounted at the ServiceAccount's path. It keeps one nftables
table, `inet kube-network-policies` (fixed upstream): `remove_table()` deletes a killed run's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from podserve.testbed.cluster.build import BuildError, _go, go_env, run_cli
from podserve.testbed.cluster.versions import GO_MODULE, required_version
from podserve.testbed.machine_cache import inputs_digest, shared_cache
from podserve.testbed.processes import StartError, free_port

#: Our Go module for the engine: its go.mod pins sigs.k8s.io/kube-network-policies (the one source of that version).
MODULE = GO_MODULE / "netpol"
PACKAGE = "sigs.k8s.io/kube-network-policies"
PATCH = MODULE / "nfqueue-compat.patch"
BINARY = "kube-network-policies"
#: Where the agent's rules live (upstream's fixed table name) and the nfqueue it reads verdicts from.
TABLE = ("inet", "kube-network-policies")
POD_SET = "podips-v4"
QUEUE_ID = 100
#: Its identity in the cluster, with upstream's install.yaml's rights (list and watch pods, namespaces, policies).
NAMESPACE, ACCOUNT = "kube-system", "kube-network-policies"
RULES = [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
         {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]}]
#: The path rest.InClusterConfig reads a pod's token and CA from (fixed in client-go).
SERVICE_ACCOUNT_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_SECONDS = 24 * 3600
START_TIMEOUT_SECONDS = 60.0
SYNC_TIMEOUT_SECONDS = 30.0
#: Debian's nftables (the Makefile's node-tools pins it): the clean-up and the tests read and delete the table with it.
NFT = "nft"


def version() -> str:
    return required_version(PACKAGE, MODULE / "go.mod")


def cache_key() -> str:
    module = inputs_digest(MODULE / "go.mod", MODULE / "go.sum", MODULE / "tools.go", PATCH)
    return f"{BINARY}-{version()}_{module}"


def binary_path(tools: Path | None = None) -> Path:
    """The engine's binary: <tools>/netpol/<cache_key()>/kube-network-policies, the shared cache by default."""
    return (tools or shared_cache()) / "netpol" / cache_key() / BINARY


def build(tools: Path | None = None, out=sys.stdout) -> Path:
    """Build the patched engine into the shared cache unless it is there; return the binary's path."""
    target = binary_path(tools)
    if target.is_file():
        print(f"kube-network-policies up to date in {target.parent}", file=out)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    env = go_env()
    started = time.monotonic()
    print(f"building {BINARY} ({PACKAGE} {version()}, patched: {PATCH.name}) ...", file=out, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".build-") as tmp:
        staging = Path(tmp) / "module"
        staging.mkdir()
        for name in ("go.mod", "go.sum", "tools.go"):
            shutil.copyfile(MODULE / name, staging / name)
        upstream = staging / "upstream"
        shutil.copytree(module_dir(env), upstream)
        for folder, _, files in os.walk(upstream):  # the module cache's copy is read-only
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(Path(folder) / name, 0o644)
        # git apply as GNU patch would (no repository above the staging folder is looked for)
        applied = subprocess.run(["git", "apply", "--verbose", str(PATCH)], cwd=upstream, capture_output=True,
                                 text=True, env=dict(env, GIT_CEILING_DIRECTORIES=str(Path(tmp))))
        if applied.returncode != 0:
            raise BuildError(f"{PATCH.name} does not apply to {PACKAGE} {version()}:\n{applied.stderr}")
        with (staging / "go.mod").open("a") as go_mod:
            go_mod.write(f"\nreplace {PACKAGE} => ./upstream\n")
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(Path(tmp) / BINARY), f"{PACKAGE}/cmd"],
            BINARY, env, staging)
        os.replace(Path(tmp) / BINARY, target)
    print(f"  built {BINARY} in {time.monotonic() - started:.0f}s", file=out, flush=True)
    return target


def module_dir(env: dict[str, str]) -> Path:
    """The engine's module in the Go module cache, downloaded and checked against cluster/netpol/go.sum."""
    done = subprocess.run(["go", "mod", "download", "-json", f"{PACKAGE}@{version()}"], cwd=MODULE, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"go mod download {PACKAGE}@{version()} failed:\n{done.stdout}{done.stderr}")
    return Path(json.loads(done.stdout)["Dir"])


# --- the agent ---------------------------------------------------------------------------------------------------


def nft(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which(NFT, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise StartError("Debian's nftables (`nft`) is missing: run `make node-tools`")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=30)


def table_exists() -> bool:
    return nft("list", "table", *TABLE).returncode == 0


def remove_table() -> bool:
    """Delete the engine's table (a killed agent leaves it, and with it every policy-selected pod unreachable);
    True when there was one."""
    if shutil.which(NFT, path="/usr/sbin:/usr/bin:/sbin:/bin") is None or not table_exists():
        return False
    done = nft("delete", "table", *TABLE)
    if done.returncode != 0:
        raise StartError(f"nft delete table {' '.join(TABLE)} failed: {done.stderr.strip()}")
    return True


def enforced_addresses() -> set[str]:
    """The pod addresses the engine now hands to its queue (the local pods some NetworkPolicy selects)."""
    done = nft("-j", "list", "set", *TABLE, POD_SET)
    if done.returncode != 0:
        return set()
    found = set()
    for item in json.loads(done.stdout).get("nftables", []):
        for element in (item.get("set") or {}).get("elem", []):
            found.add(element if isinstance(element, str) else json.dumps(element))
    return found


def queue_bound(queue: int = QUEUE_ID) -> bool:
    """Whether a process reads nfqueue `queue` (the kernel lists bound queues in /proc/net/netfilter/nfnetlink_queue)."""
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return False
    return any(line.split() and line.split()[0] == str(queue) for line in lines)


def _identity(plane, folder: Path) -> None:
    """The agent's ServiceAccount and rights (upstream's install.yaml), and a token of it with the cluster's CA."""
    from kubernetes import client

    api = plane.api_client()
    rbac, core = client.RbacAuthorizationV1Api(api), client.CoreV1Api(api)
    for create, body in (
            (lambda b: core.create_namespaced_service_account(NAMESPACE, b), {"metadata": {"name": ACCOUNT}}),
            (rbac.create_cluster_role, {"metadata": {"name": ACCOUNT}, "rules": RULES}),
            (rbac.create_cluster_role_binding, {
                "metadata": {"name": ACCOUNT},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ACCOUNT},
                "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}]})):
        try:
            create(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    token = core.create_namespaced_service_account_token(
        ACCOUNT, NAMESPACE, {"spec": {"expirationSeconds": TOKEN_SECONDS}}).status.token
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    (folder / "token").chmod(0o600)
    (folder / "namespace").write_text(NAMESPACE)
    shutil.copyfile(plane.ca_path, folder / "ca.crt")


class Agent:
    """The running engine (a Program of the node's) and what it enforces."""

    def __init__(self, program, metrics: str):
        self.program, self.metrics = program, metrics

    @classmethod
    def start(cls, plane, workdir: Path, node_name: str, run, binary: Path | None = None) -> "Agent":
        """Start the agent for `node_name` with `run(name, argv, env)`; return once its table is in place and its
        queue is read."""
        binary = binary or binary_path()
        if not binary.is_file():
            raise StartError(f"kube-network-policies is not built ({binary}): run `make netpol`")
        remove_table()
        secrets = Path(workdir) / "netpol-serviceaccount"
        _identity(plane, secrets)
        SERVICE_ACCOUNT_PATH.mkdir(parents=True, exist_ok=True)  # the mount point; empty outside the agent's namespace
        host, port = plane.server.removeprefix("https://").rsplit(":", 1)
        metrics = f"127.0.0.1:{free_port()}"
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", secrets, SERVICE_ACCOUNT_PATH,
                binary, f"--hostname-override={node_name}", f"--nfqueue-id={QUEUE_ID}",
                f"--metrics-bind-address={metrics}", "--v=2"]
        program = run("kube-network-policies", argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                      "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port})
        program.wait_until(lambda: table_exists() and queue_bound(), START_TIMEOUT_SECONDS,
                           f"its table {' '.join(TABLE)} in place and nfqueue {QUEUE_ID} read")
        return cls(program, metrics)

    def wait_enforcing(self, addresses, timeout: float = SYNC_TIMEOUT_SECONDS) -> None:
        """Wait until the engine hands these pods' connections to its queue (it syncs its set after the pods and
        policies change): before that a test's refused connection would be the engine's lag, not its verdict."""
        wanted = set(addresses)
        self.program.wait_until(lambda: wanted <= enforced_addresses(), timeout,
                                f"pods {', '.join(sorted(wanted))} in its set {POD_SET}")

    def verdicts(self) -> dict[str, float]:
        """How many packets the agent has accepted and dropped so far ({"accept": n, "drop": m}), from its metrics
        (kube_network_policies_packet_count: one per packet its rules queued, a retransmitted SYN included)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as reply:  # noqa: S310 - loopback
            text = reply.read().decode()
        found = {"accept": 0.0, "drop": 0.0}
        for line in text.splitlines():
            if line.startswith("kube_network_policies_packet_count{"):
                labels, _, value = line.rpartition(" ")
                for verdict in found:
                    if f'verdict="{verdict}"' in labels:
                        found[verdict] += float(value)
        return found

    def table(self) -> str:
        """The engine's rules as nft prints them (a failed test's report)."""
        done = nft("list", "table", *TABLE)
        return done.stdout if done.returncode == 0 else done.stderr


def main(argv: list[str] | None = None) -> int:
    return run_cli(build, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
