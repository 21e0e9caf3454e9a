"""Throughput, latency and memory beside a passthrough and a naive loop: `scorestream bench`.

The bench lives in the package (workers/commands/bench.py) so an installed scorestream can run it;
this file keeps `python bench/throughput.py` working from a checkout.
"""

from workers.commands.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
