# Checks of the operator-facing files in deploy/ (included by the Makefile).
#
# metrics-check: promtool on the alert rules, the Prometheus config, the Grafana
# dashboard's queries and a live gateway's /metrics (deploy/check_metrics.py).
# promtool comes from Debian's `prometheus` package, unpacked under .cache/ (the
# service itself is never installed); a promtool on PATH or PROMTOOL=... wins.
.PHONY: metrics-check

PROMETHEUS_DEB_DIR := .cache/prometheus
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(PROMETHEUS_DEB_DIR)/usr/bin/promtool)

$(PROMETHEUS_DEB_DIR)/usr/bin/promtool:
	mkdir -p $(PROMETHEUS_DEB_DIR)
	cd $(PROMETHEUS_DEB_DIR) && { apt-get download prometheus 2>/dev/null || { apt-get update -q && apt-get download prometheus; }; }
	dpkg-deb -x $(PROMETHEUS_DEB_DIR)/prometheus_*.deb $(PROMETHEUS_DEB_DIR)
	rm -f $(PROMETHEUS_DEB_DIR)/prometheus_*.deb
	$@ --version

metrics-check: install $(MODELS)/.exported $(PROMTOOL)
	$(PROMTOOL) check rules deploy/prometheus/rules.yml
	$(PROMTOOL) check config deploy/prometheus/scrape.yml
	PROMTOOL=$(PROMTOOL) $(PY) deploy/check_metrics.py --models $(MODELS)
