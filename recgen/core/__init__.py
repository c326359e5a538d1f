"""What training and serving share: fold-in, histories, dismissal, titles, grounding, formats.

One definition of each formula and file-format constant, so what the export
measures is what the workers serve. Imports only the standard library, numpy
and FAISS: never server, worker, export, gRPC or torch (tests/unit/test_layers.py).
"""
