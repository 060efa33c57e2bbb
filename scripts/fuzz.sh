#!/usr/bin/env bash
# `make fuzz`: bounded coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the pure code:
#   admin_body  /add and /rm bodies: admin::parse, plan_add, plan_remove
#   ring_ops    add/remove/lookup sequences on every scheme, against a model
#   http1       the data plane's head parsing and rewriting, and chunked framing
#
#   scripts/fuzz.sh                        # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh http1 # one target, longer
#
# Exits non-zero if any target crashed; the input is kept under fuzz/artifacts/<target>/
# and replays with `cd fuzz && cargo fuzz run -s none -a <target> <file>`. Such an input
# becomes a unit test in the module it broke. Inputs found on the way collect in
# fuzz/target/corpus/<target>/ (not checked in); fuzz/corpus/<target>/ holds the seeds.
#
# No sanitizer by default: the code under test is safe Rust, and ASan needs the
# unstable -Zsanitizer flag. FUZZ_SANITIZER=address turns it on (with RUSTC_BOOTSTRAP=1,
# since only a stable toolchain is at hand).
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-none}
CARGO=${CARGO:-cargo}
if (($#)); then targets=("$@"); else targets=(admin_body ring_ops http1); fi

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  "$CARGO" install cargo-fuzz --locked || exit 1
fi
if [[ $SANITIZER != none ]]; then
  export RUSTC_BOOTSTRAP=1
fi
# libFuzzer's runtime is C++, built by the libfuzzer-sys crate.
if ! command -v c++ >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

flags=(--sanitizer "$SANITIZER" --debug-assertions --release)
"$CARGO" fuzz build "${flags[@]}" || exit 1

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t"
  args=(-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [[ -f dict/$t.dict ]] && args+=(-dict="dict/$t.dict")
  [[ $t == http1 ]] && args+=(-max_len=4096)
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${SECONDS_EACH}s (log: fuzz/$log)"
  "$CARGO" fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- "${args[@]}" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  if ((rc != 0)); then
    failed+=("$t")
    grep -E -A6 "panicked at|^SUMMARY|Test unit written" "$log" | head -40 >&2
    summary+=("$t: FAILED after ${execs:-?} executions (exit $rc); see fuzz/$log")
  else
    summary+=("$t: ok, ${execs:-?} executions in ${SECONDS_EACH}s")
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
