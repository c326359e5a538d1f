"""Served ranking quality against strong peers fitted in the same run (`make quality`).

For each protocol the data are split once; the train part is written as CSV
and built into a model version by the real `recgen export` (a subprocess; it
tunes on a validation split carved from that train part only); the version is
served by a real `recgen serve` (gateway + 1 worker, loopback), and every test
user's top 10 is fetched through the public gRPC API (`Recommend(user_id, k=10)`,
no request context). The server excludes every item the user has in the train
part; the peers, fitted on the same train part in the same run, exclude the
same items:

- implicit iALS (`implicit` 0.7.3, conjugate gradient, 15 iterations), tuned over
  factors {32, 64, 128} x regularization {0.01, 0.05, 0.1, 0.5, 1} x alpha
  {1, 2, 5, 10, 20} (all 75, or 12 drawn at random with --quick) by NDCG@10 on
  a validation split carved from the train part the same way as the protocol,
  then refitted on the whole train part;
- EASE (Steck 2019), lambda in {50, 100, 200, 500, 1000} tuned the same way
  (catalogs of at most 20,000 items);
- popularity (train interaction counts).

Protocols:

1. leave_last_one_out: each user's last interaction by time (ties: file order)
   is the test item; users with >= 2 interactions.
2. random_80_20: per user, a random 20 % of the interactions (at least one,
   leaving at least one) are test; users with >= 2 interactions; seeds 0, 1, 2
   (mean +- sample sd over seeds).
3. global_time: the newest 20 % of all interactions by time (ties: file order)
   are test; test users are those with at least one train interaction.

Everywhere a test item the user also has in the train part is dropped (the
server could never recommend it), and users left without test items are not
test users. Metrics at k = 10, averaged over test users, binary relevance:
HR@10 (a test item in the list), NDCG@10 (DCG over the list / the ideal DCG of
min(|test|, 10) hits), recall@10 (hits / min(|test|, 10)), catalog coverage@10
(distinct items over all lists / catalog size).

    python -m tools.quality [--quick] [--out docs/quality.json] [--md docs/quality.md]

Loopback only; every server started is stopped whatever happens.

The package: splits, metrics, peers, data, served (export + serve + fetch),
offline (diagnostic), protocol (one run end to end), report; `python -m
tools.quality` is __main__.
"""
