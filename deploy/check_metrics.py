"""`make metrics-check`: promtool on a live gateway's /metrics and on the dashboard's queries.

Starts a real gateway (one worker) on the model repository given, makes a few
calls so every histogram has samples (one with text, one refused as bad
input), then:
  - `promtool check metrics` on the scraped page (exposition format and lint);
  - every metric the alert rules and the Grafana dashboard read is on the page;
  - the dashboard's PromQL, wrapped as recording rules ($__rate_interval and
    $job substituted), through `promtool check rules`.
The rules file and the Prometheus config are checked by the make target itself.

    PROMTOOL=.cache/prometheus/usr/bin/promtool .venv/bin/python deploy/check_metrics.py --models models
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages

from recgen.v1 import recommender_pb2 as pb  # noqa: E402
from recgen.v1 import recommender_pb2_grpc as pbg  # noqa: E402
from tools.harness.procs import Gateway  # noqa: E402

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "recgen.json"


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:recgen|grpc_server|process)_[a-zA-Z0-9_]+)", expr))
    return {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in names}


def exposed_families(page: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(page)}


def traffic(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        s = pbg.RecommenderStub(ch)
        s.SendFeedback(
            pb.SendFeedbackRequest(event_id="mc-1", user_id="mc", item_id="50", type=pb.FEEDBACK_TYPE_CLICK),
            timeout=10,
        )
        for i in range(5):
            s.Recommend(pb.RecommendRequest(user_id=f"mc{i}", k=5), timeout=10)
        s.Recommend(pb.RecommendRequest(user_id="mc", k=3, explain=True), timeout=120)
        try:
            s.Recommend(pb.RecommendRequest(user_id=""), timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--promtool", default=os.environ.get("PROMTOOL", "promtool"))
    args = ap.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="recgen-metrics-check-") as tmp:
        gw = Gateway(args.models, Path(tmp) / "state.db", "--workers", "1", metrics=True).start()
        try:
            traffic(gw.target)
            page = urllib.request.urlopen(gw.url, timeout=30).read().decode()
        finally:
            gw.stop()
        lint = subprocess.run([args.promtool, "check", "metrics"], input=page, capture_output=True, text=True)
        print(f"promtool check metrics ({len(page.splitlines())} lines): rc={lint.returncode}")
        if lint.returncode != 0 or lint.stdout.strip():
            print(lint.stdout + lint.stderr)
            failed = True

        rules = yaml.safe_load(RULES.read_text())
        read = set().union(*(metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
        read |= set().union(*(metric_names(e) for e in dashboard_exprs()))
        missing = sorted(read - exposed_families(page))
        print(f"metrics read by rules and dashboard: {len(read)}; missing from /metrics: {missing or 'none'}")
        failed |= bool(missing)

        as_rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {
                            "record": f"dashboard:query{i}",
                            "expr": e.replace("$__rate_interval", "5m").replace("$job", ".+"),
                        }
                        for i, e in enumerate(dashboard_exprs())
                    ],
                }
            ]
        }
        path = Path(tmp) / "dashboard-rules.yml"
        path.write_text(yaml.safe_dump(as_rules))
        check = subprocess.run([args.promtool, "check", "rules", str(path)], capture_output=True, text=True)
        print(f"promtool check rules (dashboard queries): rc={check.returncode}")
        if check.returncode != 0:
            print(check.stdout + check.stderr)
            failed = True
    print("metrics-check:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
