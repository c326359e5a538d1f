"""`python -m tools.soak`: a long run of mixed traffic against one real `recgen serve`, watching
for slow leaks (memory, file descriptors, threads, SQLite WAL) and latency drift.

    traffic.py   the mixed load (Recommend, explain, stream, feedback, catalog upserts), each
                 call's outcome kept
    sampler.py   every N s: RSS, fds and threads of the gateway and each worker; DB and WAL size
    faults.py    the run's two events: one hot swap of the model version, one worker SIGKILL
    verdict.py   the goals, judged on the samples (pure functions, unit-tested)
    plot.py      the figure
    cli.py       the command line: runs it all, writes JSON + PNG, prints the verdict

It does not pick request rates for capacity (see tools.loadtest) nor inject other faults
(see tools.chaos).
"""
