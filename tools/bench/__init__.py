"""`make bench`: recgen's performance, each number next to its baseline measured in the same run.

    python -m tools.bench [--quick | --smoke] [--models models] [--out docs/bench.json]
        [--plot docs/bench.png]

What it measures (docs/bench.md explains every number):

1. Generation through the public gRPC API (StreamRecommend, the real server
   `recgen serve`, real users' prompts): model-written tokens/s and time to
   the first model-written text at concurrency 1, 8, 32, against the same
   prompts decoded one request at a time by (a) transformers `generate` in
   PyTorch fp32 and (b) the served ONNX model without batching
   (`Generator.generate_alone`), same max new tokens, same thread count.
2. Recommend (explain=false) throughput at saturation and latency at half
   that load, against the empty Python gRPC echo server (tools.echo_server),
   with the same load generator (tools.loadtest) in its own process.
3. Retrieval at 100K and 1M items of a synthetic catalog fitted with iALS
   (tools.synthetic_catalog): recall@100 and queries/s of the index
   `export.index.build_index` chooses against exact search.
4. Memory: resident memory of the real worker processes, and of a process
   holding a 100K / 1M catalog's factors and index.
5. The rank path (tools.bench.rank_cost): server CPU-µs per Recommend in each
   process for cold users and users with history, p50 at one caller and
   RecommendBatch(64), against the empty gRPC server in the same run.
6. Growth (tools.bench.growth): synthetic versions with 1K/100K/1M held users
   and items, each served by a real `recgen serve`; the log-log growth
   exponent of each served figure and the goals (latency flat in users; the
   catalog's cost only in retrieval).

The server, the load generators and the baselines each run in their own
process; this one orchestrates, reads /proc and writes the JSON and the
plot. Thread counts are set explicitly everywhere. The full run takes about
16 minutes on 2 cores (946 s at load ~2; growth ~5 of them, `--skip growth`); --quick (100K
catalog only, shorter loads, growth 1K->100K) about 5;
--smoke (CI: every phase at its smallest, a 20K catalog, loads of seconds) 1-2
minutes with a tiny model, and judges no goal. Every mode exits non-zero when a
phase fails or a ratio whose phases ran is None or NaN.

Modules: plan (sizes, subprocess environment), machine, server_phase, rank_cost, baselines,
retrieval, growth (the phases), summary (ratios against the baselines), plot, runner (the command line).
"""
