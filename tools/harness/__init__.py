"""The harness the operator tools and the tests share: run recgen for real and measure it.

    tools.harness.procs        start `recgen serve` / `recgen worker` / `python -m ...`, wait until
                               ready, always stop them (Gateway, Worker, recgen, wait_healthy, stop,
                               run_module, scrape)
    tools.harness.procfs       RSS and CPU seconds of a process and its children, from /proc
    tools.harness.percentiles  latency_ms: the one percentile summary
    tools.harness.load         when requests go out: open loop (fixed rate) or closed loop (N clients)

Typical use, from a test or a tool run from the repository root:

    from tools.harness.procs import Gateway

    with Gateway(models, tmp / "state.db", "--workers", "1") as gw:   # started; stopped on exit
        call(gw.target)

Nothing here knows a scenario or a report format; each tool has its own.
"""
