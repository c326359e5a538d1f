"""Generation benchmark: text through the public gRPC API versus one-request-at-a-time baselines.

Server side (`server_level`): a closed loop of N concurrent StreamRecommend
callers for real users (MovieLens histories written through SendFeedback,
see `seed_users`). Tokens are counted from the streamed text with the LLM's
own tokenizer: the text after the response primer the prompt ends with
("You will enjoy", written for the model, not by it) is re-encoded at the
arrival time of every piece, so the tokens/s figure counts only model-written
text that reached the caller inside the measured window. Text the grounding
check withheld or cut is not counted (the workers' own counters, read
through the worker Stats rpc, show what they decoded).

Time to first text: `first_piece` is the first text_piece event (the API's
definition; it is usually the primer, released before the model has run),
`first_generated` is the first moment the text the caller holds extends past
the primer, i.e. the first model-written text a user sees. The latter is
the honest time to first token and the one the goals are judged by.

Baselines (run as their own processes, one prompt at a time, the same
prompts as the server built, the same max new tokens, greedy):

    python -m tools.gen_bench ort-alone --llm DIR --prompts P.json --threads 2 --out O.json
    python -m tools.gen_bench torch --hf DIR --prompts P.json --threads 2 --out O.json

`ort-alone` is `worker.llm.engine.Generator.generate_alone` (the served ONNX
model, plain unbatched loop: every prompt fed whole, no cached prefix; the
server's cached outline head, worker/model.py, is a serving feature it is
measured against); `torch` is transformers `generate` in PyTorch on the fp32
checkpoint the ONNX model was exported from.

The package: users (bench users, their seeding, the prompts), streams (the
server-side closed loop and the workers' counters), baselines (one prompt at
a time, ONNX alone and PyTorch); `python -m tools.gen_bench` is __main__.
"""
