"""What routing one request costs the front: choosing the decoder with the least ahead of it, among N (issue 70).

    python -m bench.routing [--decoders 2,16] [--calls 20000]

The front runs one event loop on one core for the whole pod, so every microsecond it spends on a request caps the
pod (at 0.114 ms a request on an H200 host it saturated at about 8.7k req/s). Routing reads each decoder's slot in
the pod's shared state for every request; this times that choice alone, with N decoders connected and ready.
"""

from __future__ import annotations

import argparse
import time

from podserve.testbed.decoder_routing import ready_decoders


def routing_us(decoders: int, calls: int) -> float:
    """Microseconds one `Decoders._least_busy` takes with `decoders` ready decoders (the median of five rounds)."""
    routing = ready_decoders(decoders)
    rounds = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            routing._least_busy()
        rounds.append((time.perf_counter() - began) / calls * 1e6)
    return sorted(rounds)[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.splitlines()[0])
    parser.add_argument("--decoders", default="2,16")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    for count in (int(n) for n in args.decoders.split(",")):
        print(f"{count} decoders: {routing_us(count, args.calls):.1f} us a request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
