"""Text generation on the worker: the LLM engine (continuous batching) and grounded text.

Import from the module that defines a name (this file re-exports nothing):

- api: the public types: `LLMConfig`, `StopReason`, `TextPiece` / `Finished`,
  `GenerationHandle`, `GeneratorStats`, `QueueFull`, `GeneratorClosed`
- engine: `Generator`, the scheduler loop (admission, prefill, decode, retirement)
- grounded: `generate_grounded`, the stream released only as far as it is grounded
- schedule: `PrefillPolicy`, the pure admission policy
- session: `DecoderSession`, the ONNX decoder's prefill and decode passes
- batch: `Request`, `RunningBatch` and its `KVCache`
- device_kv: `DeviceKVCache` / `DeviceKVOps`, the KV cache as OrtValues on the session's
  device (I/O binding) and its row gathers and joins there
- onnx_graph: the helper graphs' ModelProto written as bytes (no onnx package at serving time)
- decoding: next-token choice and incremental detokenization
- constraint: `TitleConstraint`, token choice that cannot name an item outside the allowed set
"""
