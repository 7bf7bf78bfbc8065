#!/usr/bin/env bash
# The longer fuzz run: the differential test against PostgreSQL (random frontend message
# sequences, both pool modes, single and split writes) with fresh seeds and many more cases,
# the concurrent one (tenants' clients at once over one shared pool, differential/concurrent.rs),
# and the reply-queue property tests with many more cases. Prints the seeds and the counts;
# a failing seed reproduces with PGTENANT_DIFF_SEED=<seed> (PGTENANT_CONC_SEED=<seed>) and the
# printed case count.
#
#   benches/fuzz.sh                 # 3 rounds x 10,000 sequences per pool mode, 3 x 1,000 concurrent rounds
#   ROUNDS=1 CASES=50000 CONC_CASES=5000 benches/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
CASES=${CASES:-10000}
CONC_CASES=${CONC_CASES:-1000}
PROPTEST=${PROPTEST:-200000}

echo "== reply-queue property tests: $PROPTEST cases each"
failed=0
out=$(PROPTEST_CASES=$PROPTEST cargo test --quiet --lib client::pipeline 2>&1) || failed=1
grep -E "test result|panicked|minimal" <<<"$out" || true

total=0
for round in $(seq 1 "$ROUNDS"); do
  seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))
  echo "== differential round $round: seed $seed, $CASES sequences per pool mode"
  out=$(PGTENANT_DIFF_SEED=$seed PGTENANT_DIFF_CASES=$CASES \
    cargo test --quiet --test e2e random_sequences_match_postgres -- --nocapture --test-threads 2 2>&1) ||
    failed=1
  grep -E "sequences,|differs|shortest|PostgreSQL:|pgtenant: |test result" <<<"$out" || true
  total=$(( total + 2 * CASES ))
done
conc=0
for round in $(seq 1 "$ROUNDS"); do
  seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM ))
  echo "== concurrent round $round: seed $seed, $CONC_CASES rounds per configuration"
  if out=$(PGTENANT_CONC_SEED=$seed PGTENANT_CONC_CASES=$CONC_CASES \
    cargo test --quiet --test e2e differential::concurrent -- --nocapture --test-threads 2 2>&1); then
    grep -E "handoffs between|test result" <<<"$out" || true
  else
    failed=1
    # The whole report: every client's sequence and both reply lists, and the shortest found.
    sed -n '/panicked/,/^test result/p' <<<"$out"
  fi
  conc=$(( conc + 2 * CONC_CASES ))
done
echo "== $total sequences in all, and $conc concurrent rounds"
# A differing sequence fails the run (it used to print and exit 0).
exit "$failed"
