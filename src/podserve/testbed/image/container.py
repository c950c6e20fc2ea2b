"""Run a pulled image as a container with Debian's runc, under a rendered Deployment's constraints.

    with Container.start(rootfs, image_config, deployment, workdir, memory_limit=None) as box:
        box.url                          # http://127.0.0.1:<free port>: the container's port 8080
        box.exec(["python", "-m", ...])  # as the image's user, in the container
        box.kill(signal.SIGTERM); box.wait(timeout); box.termination_reason()   # OOMKilled, Completed, Error

What the Deployment says is what the container gets: its env (after the image's), its user and
group, its memory limit (cgroup v1 memory.limit_in_bytes), a read-only root filesystem with a
tmpfs at /tmp (the template's emptyDir, same size limit), no capabilities, no new privileges.
The container has its own network namespace with only loopback in it (no route anywhere); a
forwarder holding a listening socket on the host's 127.0.0.1 and connecting from inside that
namespace gives the test the container's port. Containers live under runc's state root
/run/podserve-testbed-runc and the cgroup podserve-testbed/<id>: `clean_up()` (called by every
start) kills and deletes what a crashed run left there (containers whose starting process is gone).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
from pathlib import Path

from podserve.testbed.processes import free_port, poll_until

RUNC_ROOT = "/run/podserve-testbed-runc"
CGROUP_PARENT = "podserve-testbed"
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")
CLONE_NEWNET = 0x40000000
#: The annotation naming the process that started a container (clean_up() deletes it once that process is gone).
OWNER = "io.podserve.testbed.owner-pid"
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}


class ContainerError(RuntimeError):
    """runc could not create, start or reach the container; the message quotes runc."""


def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity in bytes (8Gi -> 8589934592)."""
    for suffix, factor in sorted(UNITS.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * factor)
    return int(text)


def runc(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["runc", "--root", RUNC_ROOT, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ContainerError(f"runc {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return done


def clean_up() -> list[str]:
    """Kill and delete every container in our runc root whose starter is gone (a crashed run's); remove empty cgroups.

    Containers of a test session still running (another one, started beside this) are left alone.
    """
    left = []
    if Path(RUNC_ROOT).is_dir():
        listed = runc("list", "--format", "json", check=False)
        left = [c["id"] for c in json.loads(listed.stdout or "null") or []
                if not _alive(int((c.get("annotations") or {}).get(OWNER, "0")))]
        for container in left:
            runc("delete", "--force", container, check=False)
    _remove_empty_cgroups()
    return left


def _remove_empty_cgroups() -> None:
    """rmdir podserve-testbed/<id> and podserve-testbed itself in every controller, where empty (else left)."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        parent = controller / CGROUP_PARENT
        if not parent.is_dir():
            continue
        for folder in [*(p for p in parent.iterdir() if p.is_dir()), parent]:
            try:
                folder.rmdir()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _passwd_group(rootfs: Path, uid: int) -> int:
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[2] == str(uid):
            return int(fields[3])
    return 0


def runtime_spec(rootfs: Path, image_config: dict, container: dict, pod_security: dict, tmp_bytes: int,
                 memory_bytes: int, cgroup: str) -> dict:
    """The OCI runtime config for the image's command under the Deployment's container spec."""
    config = image_config.get("config", {})
    security = {**pod_security, **container.get("securityContext", {})}
    uid = int(security.get("runAsUser", (config.get("User") or "0").split(":")[0]))
    gid = int(security.get("runAsGroup", _passwd_group(rootfs, uid)))
    env = [*config.get("Env", []), *[f"{e['name']}={e['value']}" for e in container.get("env", [])]]
    args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    tmp = [m["mountPath"] for m in container.get("volumeMounts", [])]
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
                    "args": args, "env": env, "cwd": config.get("WorkingDir") or "/",
                    "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
                    "noNewPrivileges": not security.get("allowPrivilegeEscalation", True)},
        "root": {"path": str(rootfs), "readonly": bool(security.get("readOnlyRootFilesystem"))},
        "hostname": "pod",
        "annotations": {OWNER: str(os.getpid())},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            *[{"destination": path, "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", f"size={tmp_bytes}"]} for path in tmp],
        ],
        "linux": {
            "resources": {"memory": {"limit": memory_bytes},
                          "devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": cgroup,
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


class Container:
    """One runc container of a pulled image; `.url` reaches its port through a loopback forwarder."""

    def __init__(self, name: str, bundle: Path, process: subprocess.Popen, cgroup: str, port: int, container_port: int):
        self.name, self.bundle, self.process, self.cgroup = name, bundle, process, cgroup
        self.port, self.container_port = port, container_port
        self.url = f"http://127.0.0.1:{port}"
        self._forwarder = None

    @classmethod
    def start(cls, rootfs: Path, image_config: dict, deployment: dict, workdir: Path,
              memory_limit: str | None = None) -> "Container":
        """Create and start the container (runc run, detached from nothing: its output goes to workdir/<id>.log)."""
        clean_up()
        spec = deployment["spec"]["template"]["spec"]
        (container,) = [c for c in spec["containers"] if c["name"] == "server"]
        tmp_volume = {v["name"]: v for v in spec.get("volumes", [])}
        tmp_bytes = min((quantity_bytes(tmp_volume[m["name"]]["emptyDir"].get("sizeLimit", "64Mi"))
                         for m in container.get("volumeMounts", []) if "emptyDir" in tmp_volume.get(m["name"], {})),
                        default=64 << 20)
        memory = quantity_bytes(memory_limit or container["resources"]["limits"]["memory"])
        name = f"podserve-{secrets.token_hex(4)}"
        cgroup = f"/{CGROUP_PARENT}/{name}"
        bundle = workdir / name
        bundle.mkdir(parents=True)
        config = runtime_spec(rootfs, image_config, container, spec.get("securityContext", {}), tmp_bytes, memory,
                              cgroup)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        log = open(workdir / f"{name}.log", "wb")
        # --keep: runc leaves the stopped container (and its cgroup, with the OOM counter) until remove().
        process = subprocess.Popen(["runc", "--root", RUNC_ROOT, "run", "--keep", "--bundle", str(bundle), name],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        port = container["ports"][0]["containerPort"]
        box = cls(name, bundle, process, cgroup, free_port(), port)
        try:
            pid = poll_until(box.init_pid, f"runc starting {name}", 30)
            box._forwarder = _Forwarder(box.port, pid, port)
        except BaseException:
            box.remove()
            raise
        return box

    def log_path(self) -> Path:
        return self.bundle.parent / f"{self.name}.log"

    def log(self) -> str:
        return self.log_path().read_text(errors="replace")

    def init_pid(self) -> int | None:
        if self.process.poll() is not None:
            raise ContainerError(f"runc run {self.name} exited {self.process.returncode}:\n{self.log()[-2000:]}")
        state = runc("state", self.name, check=False)
        return json.loads(state.stdout).get("pid") if state.returncode == 0 else None

    def exec(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """Run argv in the container as its process runs (user, env, cwd)."""
        return runc("exec", self.name, *argv, timeout=timeout, check=False)

    def kill(self, signum: int = signal.SIGTERM) -> None:
        runc("kill", self.name, str(int(signum)), check=False)

    def wait(self, timeout: float) -> int:
        """The container's exit status (128 + signal when killed), once its init has exited."""
        return self.process.wait(timeout)

    def memory_counters(self) -> dict[str, int]:
        """cgroup v1's memory.oom_control of the container (oom_kill: processes the kernel OOM-killed)."""
        path = MEMORY_CGROUP / self.cgroup.lstrip("/") / "memory.oom_control"
        try:
            return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}
        except FileNotFoundError:
            return {}

    def termination_reason(self) -> str:
        """Why the container stopped, as the kubelet reports it: OOMKilled, Completed (exit 0) or Error."""
        status = self.process.poll()
        if status is None:
            raise ContainerError(f"{self.name} is still running")
        if self.memory_counters().get("oom_kill", 0) > 0:
            return "OOMKilled"
        return "Completed" if status == 0 else "Error"

    def remove(self) -> None:
        """Kill and delete the container and its forwarder (always safe to call)."""
        if self._forwarder:
            self._forwarder.stop()
        runc("delete", "--force", self.name, check=False)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        _remove_empty_cgroups()

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _Forwarder:
    """127.0.0.1:<port> on the host to 127.0.0.1:<container port> inside the container's network namespace.

    The listening socket is made in the host's namespace; a thread that entered the container's
    namespace (setns) makes the connections, so no address outside loopback is ever used.
    """

    def __init__(self, port: int, pid: int, container_port: int):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.container_port = container_port
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, name=f"forward-{port}", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        if ctypes.CDLL(None, use_errno=True).setns(self.netns, CLONE_NEWNET) != 0:
            self.closed.set()
            return
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.container_port), timeout=5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def stop(self) -> None:
        self.closed.set()
        self.listener.close()
        os.close(self.netns)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
