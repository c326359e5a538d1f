"""The offline half (`recgen export`): data → iALS → ONNX scorer, FAISS index, encoder, LLM → version."""
