"""recgen, the shared package: the `recgen` CLI, the model-repository format, core math, stubs.

`recgen.core` is what the offline half (export/) and the online half (worker/,
server/) share; the generated gRPC stubs live in `recgen.v1` and
`recgen.worker.v1`. Nothing here imports torch.
"""

__version__ = "0.1.0"
