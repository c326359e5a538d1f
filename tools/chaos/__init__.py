"""`make chaos`: break a real recgen on purpose and count what was survived and what was lost.

    python -m tools.chaos [--quick] [--models DIR] [--json docs/chaos.json]

Every scenario runs against `recgen serve` processes started here on
127.0.0.1 (ports chosen by the kernel, workers on unix sockets, state in a
throwaway SQLite file under var/chaos/), and every process is stopped
whatever happens. All load is bounded in count and in time.

1. worker SIGKILL: steady open-loop load on 2 workers, one worker is killed.
   Error rate over the run, and the time until the gateway reports 2 healthy
   workers again (its Prometheus `recgen_workers_healthy`).
2. worker SIGSTOP: the same with a hung worker: only health checks that time
   out can find it; it must be taken out of rotation and restarted.
3. deadlines: requests whose deadline passes while they wait in a worker's
   queue are dropped before any work (worker counters via /metrics).
4. overload: 5x the sustainable rate of an explain-heavy mix with a low
   --max-in-flight: admitted latency, how fast the excess is refused, memory
   of the process tree, and a normal request right after the load drops.
5. durability: concurrent SendFeedback while the gateway is SIGKILLed at
   random moments, cycle after cycle; unacknowledged events are retried with
   the same event_id. Acknowledged events lost and events duplicated are
   counted in the SQLite file itself.
6. rolling restart: two gateways on one SQLite file behind one loopback TCP balancer, each
   taken out, SIGTERMed (drained) and replaced in turn under Recommend and SendFeedback load:
   failed calls, acknowledged events lost or duplicated.

The table at the end has one row per claim with the figures behind it;
--json writes every figure. docs/operating.md explains the guarantees.

One module per scenario (worker_faults, deadlines, overload, durability, rolling), each with its
pass criteria and its table row; runner runs them and writes the table and the JSON.
"""
