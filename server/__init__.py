"""The gateway (`recgen serve`): the public gRPC API, state store, worker pool and fan-out."""
