"""Replay evaluation: does real-time feedback make the next answer better?

MovieLens-100K is split by time: a model version is trained on the past, the
past events are loaded into a fresh state store, and the future events are
replayed in time order through a real `recgen serve`. Before each future
event three answers are asked for (k=10), all excluding every item the user
has seen so far (past and future-so-far):

- (a) static:   the user's past events only (a shadow user id "static:<id>"
                holding a copy of them), i.e. the model as trained;
- (b) feedback: the real user id, whose state also holds every future event
                replayed so far (sent with SendFeedback, as a client would);
- (c) popularity: a user id without events ("pop:<id>"): the cold-start answer.

Each answer is scored on whether the event's item is in it (HitRate@10,
NDCG@10); the lists give coverage, novelty and intra-list diversity. Results
are split into users known at training time and users new in the future.

The package: split (past/future by time), state (the past into a state
store), replay (the future through gRPC, three arms), metrics, report,
evaluation (one run end to end); `python -m tools.replay_eval` is __main__.

    python -m tools.replay_eval [--quick] [--out docs/eval.json] [--plot docs/eval.png]

Loopback only; the gateway is stopped whatever happens. See docs/eval.md.
"""
