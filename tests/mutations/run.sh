#!/usr/bin/env bash
# Mutation checks: each patch in this folder plants one mistake in the library; the test suite must fail on
# every one of them. Usage, from a clone with .venv and no uncommitted changes to pipeline/ and flows/:
#   bash tests/mutations/run.sh                 # each mutant against the fast subset (-m "not slow"), or against
#                                               # the tests its patch names on a "tests:" line (slow ones)
#   bash tests/mutations/run.sh -m ""           # the whole suite against each instead
# Prints "killed" (a test failed: good) or "SURVIVED" (no test saw the mistake) per patch; exit 1 if any survived.
set -u
cd "$(dirname "$0")/../.."
if ! git diff --quiet -- pipeline flows; then
  echo "pipeline/ or flows/ has uncommitted changes; commit or stash them first (the patches are applied in place)"
  exit 2
fi
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-m "not slow")
status=0
for patch in tests/mutations/*.patch; do
  git apply "$patch" || { echo "cannot apply $patch (the code moved on: regenerate it)"; exit 2; }
  trap 'git apply -R "$patch"; exit 130' INT TERM
  log=$(mktemp)
  run=("${args[@]}")
  named=$(sed -n 's/^tests: //p' "$patch")
  if [ $# -eq 0 ] && [ -n "$named" ]; then read -r -a run <<<"$named"; run=(-m "" -n 0 "${run[@]}"); fi
  if .venv/bin/python -m pytest -q -x -p no:cacheprovider "${run[@]}" >"$log" 2>&1; then
    echo "SURVIVED $(basename "$patch")"; status=1
  else
    echo "killed   $(basename "$patch"): $(grep -m1 -E '^FAILED|^ERROR' "$log")"
  fi
  git apply -R "$patch"
  trap - INT TERM
  rm -f "$log"
done
exit $status
