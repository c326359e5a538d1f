"""A model worker (`recgen worker`): ranking (fold-in, FAISS, ONNX scorer) and the LLM engine."""
