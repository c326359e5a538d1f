"""The language-model export steps: checkpoint → ONNX decoder with KV cache, int8, measured."""
