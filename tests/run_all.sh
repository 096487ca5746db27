#!/usr/bin/env bash
# Runs every test file in its own pytest process, then prints the totals.
# Why it existed: the whole suite in ONE process segfaulted. The cause is found and fixed (one ov.Core per
# process, runtime/openvino.py; regression test tests/runtime/test_signals.py); this runner goes once the
# one-process `python -m pytest` run has passed end to end in CI.
# Extra arguments go to every pytest call (e.g. -x, -k).
set -u
cd "$(dirname "$0")/.."
status=0; passed=0; failed=0
for f in tests/test_*.py tests/*/test_*.py; do
  out=$(python -m pytest -q -p no:cacheprovider "$f" "$@" 2>&1); rc=$?
  summary=$(printf '%s\n' "$out" | tail -n 1)
  echo "$f: $summary"
  [ $rc -eq 0 ] || { status=1; printf '%s\n' "$out" | tail -n 60; }
  for n in $(printf '%s' "$summary" | grep -oE '[0-9]+ passed' | grep -oE '^[0-9]+'); do passed=$((passed + n)); done
  bad=0
  for n in $(printf '%s' "$summary" | grep -oE '[0-9]+ (failed|errors?)' | grep -oE '^[0-9]+'); do bad=$((bad + n)); done
  [ $rc -ne 0 ] && [ $bad -eq 0 ] && bad=1  # a crash prints no summary
  failed=$((failed + bad))
done
echo "$passed passed, $failed failed"
exit $status
