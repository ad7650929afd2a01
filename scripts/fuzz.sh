#!/usr/bin/env bash
# Runs every fuzz target in the repository, one after another, for
# FUZZTIME each, and prints a summary table: package, target, wall time,
# CPU seconds, execs, new corpus entries, crashes.
#
# Targets are found, not listed: every package with a `func Fuzz` in a
# test file is built once (go test -c, with the fuzzing instrumentation)
# and asked for its targets (-test.list '^Fuzz'). A new target is picked
# up without editing this script.
#
# A crash makes the script exit non-zero; Go writes the crasher to the
# package's testdata/fuzz/<Target>/, where the next `go test` runs it as a
# regression test. Commit it with the fix.
#
# Environment:
#   FUZZTIME   per-target duration (Go's -fuzztime: 30s, 5000x); default 30s
#   FUZZPKGS   package patterns to search; default ./...
#   FUZZMATCH  regexp the target name must match; default all
#   FUZZPAR    fuzzing workers per target (-parallel); default 1
#   FUZZMINIMIZE  time to minimize each new input (-fuzzminimizetime);
#              default 5s (Go's 60s stalls short runs of targets with
#              large inputs)
#   FUZZLOG    directory for each target's output; default a temporary one
#   FUZZREPORT file to which the summary table is also written (markdown)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

fuzztime=${FUZZTIME:-30s}
pkgs=${FUZZPKGS:-./...}
match=${FUZZMATCH:-.}
par=${FUZZPAR:-1}
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
logs=${FUZZLOG:-$work/logs}
mkdir -p "$logs"
cache=$(go env GOCACHE)/fuzz

# Packages with a fuzz target: directories whose test files declare one.
# (go list gives the directories; grep is far cheaper than building every
# test binary to ask it.)
mapfile -t dirs < <(go list -f '{{.Dir}}' $pkgs | while read -r d; do
	if grep -lqs '^func Fuzz' "$d"/*_test.go; then echo "$d"; fi
done)

rows=()
crashed=0
total_start=$SECONDS
for dir in "${dirs[@]}"; do
	pkg=$(cd "$dir" && go list .)
	bin=$work/$(echo "$pkg" | tr / _).test
	# -fuzz makes go test -c build the package with coverage
	# instrumentation, as go test -fuzz would.
	if ! (cd "$dir" && go test -c -fuzz=. -o "$bin" . >"$logs/build.log" 2>&1); then
		cat "$logs/build.log"
		echo "fuzz: $pkg: build failed" >&2
		rows+=("$pkg|(build)|-|-|-|-|build failed")
		crashed=1
		continue
	fi
	mapfile -t targets < <(cd "$dir" && "$bin" -test.list '^Fuzz' | grep '^Fuzz' | grep -E -- "$match")
	for t in "${targets[@]}"; do
		log=$logs/$(echo "$pkg" | tr / _).$t.log
		echo "fuzz: $pkg $t for $fuzztime" >&2
		start=$SECONDS
		# Run in the package directory, as go test does: the seed
		# corpus is read from, and crashers written to, testdata/fuzz.
		(cd "$dir" && /usr/bin/time -f 'cpu %U %S' -o "$log.time" \
			"$bin" -test.run '^$' -test.fuzz "^$t\$" -test.fuzztime "$fuzztime" \
			-test.parallel "$par" -test.fuzzminimizetime "${FUZZMINIMIZE:-5s}" -test.fuzzcachedir "$cache/$pkg" >"$log" 2>&1)
		rc=$?
		wall=$((SECONDS - start))
		cpu=$(awk '/^cpu /{printf "%.1f", $2 + $3}' "$log.time" 2>/dev/null)
		last=$(grep -E '^fuzz: elapsed' "$log" | tail -n 1)
		execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
		new=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
		# The time can run out while Go is still running the corpus
		# (the cached one grows with every run).
		[ -z "$execs" ] && grep -q 'gathering baseline' <<<"$last" && execs="corpus only"
		result=0
		if [ $rc -ne 0 ] && ! grep -q 'Failing input written' "$log" &&
			grep -q '^    context deadline exceeded' "$log"; then
			# The time ran out while the worker was still on an input
			# (typically minimising a new one): Go reports the
			# deadline as a failure, but no input failed.
			rc=0
			result="0 (deadline in an input)"
		fi
		if [ $rc -ne 0 ]; then
			crashed=1
			result=1
			written=$(sed -nE 's/.*(testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | tail -n 1)
			[ -n "$written" ] && result="1 ($(realpath --relative-to="$root" "$dir/$written"))"
			echo "fuzz: $pkg $t FAILED; output:" >&2
			tail -n 40 "$log" >&2
		fi
		rows+=("$pkg|$t|${wall}s|${cpu:--}|${execs:--}|${new:--}|$result")
	done
done

table() {
	echo "| package | target | time | cpu s | execs | new corpus | crashes |"
	echo "|---|---|---|---|---|---|---|"
	for r in "${rows[@]}"; do echo "| ${r//|/ | } |"; done
}
echo
table | column -t -s '|' -o '|'
echo "fuzz: ${#rows[@]} targets, $((SECONDS - total_start))s, FUZZTIME=$fuzztime"
if [ -n "${FUZZREPORT:-}" ]; then
	table >"$FUZZREPORT"
fi
if [ $crashed -ne 0 ]; then
	echo "fuzz: FAILED (crashers, if any, are in the packages' testdata/fuzz/)" >&2
	exit 1
fi
