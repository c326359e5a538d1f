"""recgen from Python: Recommend with text, StreamRecommend, SendFeedback.

    python clients/python/example.py [--target 127.0.0.1:50051] [--user alice]

Uses the stubs `make proto` generates (importable as recgen.v1 once the
project is installed: `make install`). The channel carries the published
retry policy, clients/service_config.json: a call that finds no working
gateway (UNAVAILABLE: draining, restarting, connection cycled) is retried
with backoff, transparently; see clients/README.md.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import grpc

from recgen.v1 import recommender_pb2 as pb
from recgen.v1 import recommender_pb2_grpc as pbg

SERVICE_CONFIG = Path(__file__).resolve().parent.parent / "service_config.json"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--user", default="alice")
    args = ap.parse_args()

    options = [("grpc.service_config", SERVICE_CONFIG.read_text())]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = pbg.RecommenderStub(channel)

        # 1. Ranked items plus a short text presenting them.
        resp = stub.Recommend(pb.RecommendRequest(
            user_id=args.user, k=5, explain=True,
            context=pb.Context(device="mobile", local_time="2026-11-27T20:15:00+01:00")),
            timeout=10)
        print(f"model {resp.model_version}, request {resp.request_id}")
        for rank, item in enumerate(resp.items, 1):
            print(f"  {rank}. {item.title} [{item.item_id}] score={item.score:.3f}")
        print(f"text ({pb.TextStatus.Name(resp.text_status)}): {resp.text}")

        # 2. The user clicks the first item: the very next answer reflects it.
        first = resp.items[0]
        ack = stub.SendFeedback(pb.SendFeedbackRequest(
            event_id=str(uuid.uuid4()), user_id=args.user, item_id=first.item_id,
            type=pb.FEEDBACK_TYPE_CLICK, request_id=resp.request_id), timeout=10)
        print(f"feedback CLICK {first.title}: stored={ack.stored}")

        # 3. Streamed: items first, then the text piece by piece.
        print("stream: ", end="", flush=True)
        for event in stub.StreamRecommend(pb.StreamRecommendRequest(
                request=pb.RecommendRequest(user_id=args.user, k=3)), timeout=30):
            kind = event.WhichOneof("event")
            if kind == "items":
                print(" | ".join(i.title for i in event.items.items))
            elif kind == "text_piece":
                print(event.text_piece, end="", flush=True)
            else:
                print(f"\n[final: {pb.TextStatus.Name(event.final.text_status)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
