#!/usr/bin/env bash
# How the pipeline scales with this box's cores: a sweep of stage-worker runners × queue
# partitions for the cheapest gear, then the full `cascadeserve bench` with the best of them.
# Run it on a many-core host to size a deployment (CASCADE_WORKER_RUNNERS,
# CASCADE_QUEUE_PARTITIONS); it needs only the cascadeserve binary and the ONNX Runtime library.
#
#   scripts/bench-cores.sh OUT_DIR
#
# OUT_DIR gets ceiling.txt (the broker ceiling alone), sweep.txt (every sweep run's output, one
# after the other), sweep.tsv (runners, partitions, items/s), full.txt and full.json (the full
# bench with the best runners and partitions) and sweep-json.tar.gz (every sweep run's JSON).
#
# Knobs: CASCADE_BIN (default bin/cascadeserve), CASCADE_ONNXRUNTIME_LIB (as for bench),
# BENCH_CORES_SWEEP ("RUNNERS:PARTITIONS ...", default scaled to nproc),
# BENCH_CORES_GEAR (the gear swept, default g16: the built-in plan's cheapest),
# BENCH_CORES_ITEMS (items per request, default 32), BENCH_CORES_DURATION (default 8s),
# BENCH_CORES_FULL_FLAGS (further flags of the full bench, e.g. "--duration 5s").
set -uo pipefail
# shellcheck disable=SC2086 # BENCH_CORES_FULL_FLAGS is a list of flags

out="${1:?usage: scripts/bench-cores.sh OUT_DIR}"
mkdir -p "${out}" || exit 1
cs="${CASCADE_BIN:-bin/cascadeserve}"
[[ -x "${cs}" ]] || {
	echo "bench-cores: no ${cs}: run make build (or set CASCADE_BIN)" >&2
	exit 1
}
cpus="$(nproc)"
items="${BENCH_CORES_ITEMS:-32}"
duration="${BENCH_CORES_DURATION:-8s}"
gear="${BENCH_CORES_GEAR:-g16}"
if [[ -n "${BENCH_CORES_SWEEP:-}" ]]; then
	sweep="${BENCH_CORES_SWEEP}"
elif ((cpus >= 12)); then
	sweep="2:1 4:2 8:2 8:4 12:4 8:8"
elif ((cpus >= 6)); then
	sweep="2:1 4:2 4:4"
else
	sweep="2:1 2:2"
fi
echo "bench-cores: ${cpus} CPUs, sweep (runners:partitions) ${sweep}, ${items}-item requests" >&2

"${cs}" bench --only ceiling --json "${out}/ceiling.json" >"${out}/ceiling.txt" 2>&1 || {
	echo "bench-cores: the broker ceiling failed:" >&2
	tail -5 "${out}/ceiling.txt" >&2
	exit 1
}
: >"${out}/sweep.txt"
printf 'runners\tpartitions\titems_per_s\tp95_ms\n' >"${out}/sweep.tsv"
mkdir -p "${out}/sweep-json"
for rp in ${sweep}; do
	r="${rp%%:*}" p="${rp#*:}"
	echo "bench-cores: gear ${gear}, ${r} runners, ${p} partitions..." >&2
	json="${out}/sweep-json/r${r}-p${p}.json"
	{
		echo "=== runners ${r}, partitions ${p}"
		"${cs}" bench --only pipeline --gears "${gear}" --baseline none --request-items "${items}" --runners "${r}" --partitions "${p}" \
			--half-load 0 --idle 0 --warmup 2s --duration "${duration}" --json "${json}" 2>&1
		echo
	} >>"${out}/sweep.txt"
	python3 - "${json}" "${r}" "${p}" >>"${out}/sweep.tsv" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1]))
load = d["pipelines"][-1]["load"]
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{load['throughput']:.0f}\t{load['p95_ms']:.1f}")
EOF
done
tar -czf "${out}/sweep-json.tar.gz" -C "${out}" sweep-json && rm -rf "${out}/sweep-json"
cat "${out}/sweep.tsv" >&2

best="$(tail -n +2 "${out}/sweep.tsv" | sort -t$'\t' -k3,3nr | head -1)"
r="$(cut -f1 <<<"${best}")" p="$(cut -f2 <<<"${best}")"
[[ -n "${r}" ]] || {
	echo "bench-cores: no sweep run finished; see ${out}/sweep.txt" >&2
	exit 1
}
echo "bench-cores: full bench with ${r} runners, ${p} partitions..." >&2
"${cs}" bench --request-items "${items}" --runners "${r}" --partitions "${p}" ${BENCH_CORES_FULL_FLAGS:-} --json "${out}/full.json" >"${out}/full.txt" 2>&1
rc=$?
grep -v '^bench: ' "${out}/full.txt" >&2
exit "${rc}"
