"""`make gpu-check` (`python -m tools.gpu_check`): issue #19's GPU figures, ready before a GPU is at hand.

- run: the stages, the exit status, the printed summary (start here)
- model: SmolLM2-135M's architecture with random weights, exported with torch.onnx alone
- tokenizer: a byte-level tokenizer.json of any vocabulary size, built offline
- arms: tokens/s and TTFT per batch: the worker's Generator (CPU int8, CUDA with and
  without I/O binding) and PyTorch `generate`
- equality: greedy tokens on CUDA against CPU, and the tolerance policy
- serving: a short Recommend load test of `recgen serve --device cuda`
- faiss_arm: flat search on CPU against GPU, where faiss has GPU support
- report: goals, table, JSON
- cuda_env: where the CUDA libraries are (LD_LIBRARY_PATH, preload)
- wheels: the GPU machine's wheels, split into parts that travel, joined, verified, installed
  (standard library only: it runs before anything is installed)

See docs/gpu.md. This package re-exports nothing.
"""
