"""recgen: real-time personalized recommendation over gRPC.

Shared code of the offline (export/) and online (worker/, server/) halves.
Only `repository` is shared by both; nothing here imports torch.
"""

__version__ = "0.1.0"
