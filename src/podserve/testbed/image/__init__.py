"""The service and tooling images built for real: BuildKit's daemon, a registry, stand-in base images, runc.

`make image` (`python -m podserve.testbed.image`) and the tests in tests/pipeline/ run the CI jobs'
own build lines (`buildctl-daemonless.sh build ...`, upstream's script) against a local registry
(distribution's, htpasswd authentication on) that also serves stand-ins of the base images under
their real names, and start the pulled service image as a container with Debian's runc.

What is a stand-in here: the base images only (bases.py says how each is made from Debian's
packages). BuildKit, the registry, pip's index of the pinned wheels, runc and everything the
Dockerfiles do above the bases are real.
"""
