#!/usr/bin/env bash
# The GPU check of the stage worker's CUDA path: everything a GPU host needs to run in one go,
# in under 5 minutes, with every result in one folder. It needs no Go: it runs the binaries
# that `make gpu-bundle` builds (see the README, "Running on GPUs").
#
#   scripts/gpu-check.sh [--out DIR] [--dry-run-cpu]
#
# Steps (each logged to DIR/<step>.log; DIR/steps.tsv has every step's status and seconds):
#   host        nvidia-smi, and the CUDA 13 / cuDNN 9 libraries the provider loads
#   unit        internal/onnxrt's tests on the GPU (CASCADE_GPU=1: the CUDA tests must run and pass)
#   mnist       the MNIST ladder profiled on CUDA (cascadeserve profile --provider cuda),
#               with ONNX Runtime's defaults and with page-locked host buffers
#   resnet      ResNet-18/50/152 (random weights: cost only) exported by PyTorch, profiled through
#               the runner and timed with PyTorch in the same run under equal conditions: input
#               from host memory each batch, output copied back, the same TF32 setting
#               (scripts/resnet_ladder.py); ratio tables runner / PyTorch
#   bench       cascadeserve bench with CUDA workers (broker ceiling, in-process compute, pipeline)
# Then DIR/summary.md, and DIR.tar.gz of the folder (without the exported .onnx files).
#
# Without a GPU (no nvidia-smi, or it lists none) it says so and exits 0 having run nothing.
# --dry-run-cpu runs the same steps on the CPU provider with tiny sizes, to test the script
# itself on a machine without a GPU.
#
# Binaries: .gpu-bundle/stage/bin (assembled from the .gpu-bundle/part-* pieces `make gpu-bundle`
# writes, if they are there), else bin/ (make build; go test -c -o bin/onnxrt.test ./internal/onnxrt).
# The library: CASCADE_ONNXRUNTIME_LIB, else the CUDA set in .cache/onnxruntime/1.29.0-cuda
# (from the bundle, or scripts/install-onnxruntime.sh --cuda where npm can fetch it).
#
# Environment knobs (defaults fit the 5 minutes on an H100/H200):
#   GPU_CHECK_RESNET_MODELS   resnet18,resnet50,resnet152
#   GPU_CHECK_RESNET_CONFIGS  runner configurations, ';'-separated NAME:FLAGS (FLAGS are
#                             cascadeserve profile flags, ',' for spaces), default:
#                             tf32-on:--cuda-tf32,true;tf32-off:--cuda-tf32,false;tf32-on-pinned:--cuda-tf32,true,--cuda-pin,true
#   GPU_CHECK_MAX_BATCH       64      GPU_CHECK_REPS 10      GPU_CHECK_TORCH_BATCHES 1,8,64
#   GPU_CHECK_BENCH_FLAGS     extra flags of the bench step
#   PYTHON                    a python3 with torch (default: the first of python3, /usr/bin/python3 that has it)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo}"

out=""
dry=0
while (($# > 0)); do
	case "$1" in
	--out)
		out="${2:?--out needs a folder}"
		shift 2
		;;
	--out=*)
		out="${1#--out=}"
		shift
		;;
	--dry-run-cpu)
		dry=1
		shift
		;;
	-h | --help)
		sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "gpu-check: unknown argument $1 (want --out DIR, --dry-run-cpu)" >&2
		exit 2
		;;
	esac
done

say() { echo "gpu-check: $*" >&2; }

# fenced prints a section of the summary: a heading, title, over the output
# of the command that follows it, in a code block.
fenced() {
	local title=$1
	shift
	echo
	echo "## ${title}"
	echo
	echo '```'
	"$@"
	echo '```'
}

# --- is there a GPU? ----------------------------------------------------------------------
if ((dry == 0)); then
	if ! command -v nvidia-smi >/dev/null 2>&1; then
		say "no NVIDIA GPU here (nvidia-smi not found): nothing to check on this machine; run it on a GPU host (see the README, \"Running on GPUs\")"
		exit 0
	fi
	if ! gpus="$(nvidia-smi -L 2>&1)" || ! grep -q '^GPU ' <<<"${gpus}"; then
		say "no NVIDIA GPU visible (nvidia-smi -L: $(head -1 <<<"${gpus}")): nothing to check on this machine"
		exit 0
	fi
fi

out="${out:-${repo}/gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "${out}" || exit 1
out="$(cd "${out}" && pwd)"
started=$(date +%s)
: >"${out}/steps.tsv"
failed=0

# step NAME TIMEOUT_S CMD...: runs CMD with its output in NAME.log, records status and time.
step() {
	local name="$1" limit="$2"
	shift 2
	local t0 rc
	t0=$(date +%s)
	say "${name}: $* (log ${out}/${name}.log)"
	timeout --kill-after=10 "${limit}" "$@" >"${out}/${name}.log" 2>&1
	rc=$?
	printf '%s\t%s\t%ss\n' "${name}" "$([[ ${rc} == 0 ]] && echo ok || echo "FAILED (exit ${rc}$([[ ${rc} == 124 ]] && echo ', timed out'))")" "$(($(date +%s) - t0))" >>"${out}/steps.tsv"
	if ((rc != 0)); then
		failed=1
		say "${name} failed (exit ${rc}); its log ends:"
		tail -5 "${out}/${name}.log" >&2
	fi
	return "${rc}"
}

# --- binaries and library -----------------------------------------------------------------
bundle="${repo}/.gpu-bundle"
if compgen -G "${bundle}/part-*" >/dev/null; then
	step assemble 120 scripts/make-gpu-bundle.sh --assemble || {
		say "the bundle's pieces do not assemble (see ${out}/assemble.log): send every .gpu-bundle/part-* first"
		exit 1
	}
fi
bin=""
for d in "${bundle}/stage/bin" "${repo}/bin"; do
	if [[ -x "${d}/cascadeserve" ]]; then
		bin="${d}"
		break
	fi
done
[[ -n "${bin}" ]] || {
	say "no cascadeserve binary: run make gpu-bundle (or make build) on a machine with Go and send it"
	exit 1
}
cs="${bin}/cascadeserve"
unit_test="${bin}/onnxrt.test"

provider=cuda
if ((dry)); then
	provider=cpu
	export CASCADE_ONNXRUNTIME_LIB="${CASCADE_ONNXRUNTIME_LIB:-$(scripts/install-onnxruntime.sh)}"
else
	if [[ -z "${CASCADE_ONNXRUNTIME_LIB:-}" ]]; then
		for lib in "${bundle}/stage/.cache/onnxruntime/1.29.0-cuda/libonnxruntime.so.1" "${repo}/.cache/onnxruntime/1.29.0-cuda/libonnxruntime.so.1"; do
			if [[ -f "${lib}" ]]; then
				export CASCADE_ONNXRUNTIME_LIB="${lib}"
				break
			fi
		done
	fi
	if [[ -z "${CASCADE_ONNXRUNTIME_LIB:-}" ]]; then
		say "no CUDA library set in the bundle or .cache: fetching it (scripts/install-onnxruntime.sh --cuda)"
		eval "$(scripts/install-onnxruntime.sh --cuda 2>"${out}/install.log" | grep '^export CASCADE_ONNXRUNTIME_LIB=')"
	fi
	[[ -n "${CASCADE_ONNXRUNTIME_LIB:-}" ]] || {
		say "no ONNX Runtime CUDA library set (see ${out}/install.log)"
		exit 1
	}
fi
say "binaries ${bin}, library ${CASCADE_ONNXRUNTIME_LIB}, results in ${out}"

# --- host ---------------------------------------------------------------------------------
{
	echo "date: $(date -u +%FT%TZ)"
	echo "host: $(uname -a)"
	echo "glibc: $(ldd --version 2>&1 | head -1)"
	echo "cpus: $(nproc)"
	echo "library: ${CASCADE_ONNXRUNTIME_LIB}"
	echo "binary: $("${cs}" version 2>/dev/null || echo "${cs}")"
} >"${out}/host.txt"
if ((dry == 0)); then
	nvidia-smi >"${out}/nvidia-smi.txt" 2>&1
	nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >>"${out}/host.txt" 2>&1
	# The provider's CUDA libraries: found where? (prints an LD_LIBRARY_PATH export if needed)
	ldexport="$(scripts/install-onnxruntime.sh --check-cuda 2>"${out}/cuda-libraries.txt")"
	libs_ok=$?
	cat "${out}/cuda-libraries.txt" >&2
	[[ -z "${ldexport}" ]] || eval "${ldexport}"
	echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >>"${out}/host.txt"
	if ((libs_ok != 0)); then
		printf 'host\tFAILED (CUDA libraries missing, see cuda-libraries.txt)\t0s\n' >>"${out}/steps.tsv"
		failed=1
	fi
fi

# --- unit ---------------------------------------------------------------------------------
if [[ -x "${unit_test}" ]]; then
	gpu_env=()
	((dry)) || gpu_env=(CASCADE_GPU=1)
	step unit 120 env "${gpu_env[@]}" CASCADE_REQUIRE_ORT=1 bash -c 'cd internal/onnxrt && exec "$0" -test.v -test.count=1 -test.timeout=100s' "${unit_test}"
	grep -E '^(--- |ok|PASS|FAIL)' "${out}/unit.log" | grep -v '^    ' >"${out}/unit-summary.txt"
else
	say "no ${unit_test}: unit step skipped (make gpu-bundle builds it)"
	printf 'unit\tSKIPPED (no onnxrt.test binary)\t0s\n' >>"${out}/steps.tsv"
fi

# --- mnist --------------------------------------------------------------------------------
reps="${GPU_CHECK_REPS:-10}"
((dry)) && reps=2
step mnist-${provider} 120 "${cs}" profile --provider "${provider}" --out "${out}/mnist-${provider}.json" --hop-samples 0 --quiet --reps "${reps}"
((dry)) || step mnist-cuda-pinned 120 "${cs}" profile --provider cuda --cuda-pin true --out "${out}/mnist-cuda-pinned.json" --hop-samples 0 --quiet --reps "${reps}"

# --- resnet -------------------------------------------------------------------------------
py="${PYTHON:-}"
if [[ -z "${py}" ]]; then
	for cand in python3 /usr/bin/python3; do
		if command -v "${cand}" >/dev/null 2>&1 && "${cand}" -c 'import torch' >/dev/null 2>&1; then
			py="${cand}"
			break
		fi
	done
fi
if [[ -z "${py}" ]]; then
	say "no python3 with torch: resnet step skipped"
	printf 'resnet\tSKIPPED (no python3 with torch)\t0s\n' >>"${out}/steps.tsv"
else
	models="${GPU_CHECK_RESNET_MODELS:-resnet18,resnet50,resnet152}"
	max_batch="${GPU_CHECK_MAX_BATCH:-64}"
	tb="${GPU_CHECK_TORCH_BATCHES:-1,8,64}"
	configs="${GPU_CHECK_RESNET_CONFIGS:-tf32-on:--cuda-tf32,true;tf32-off:--cuda-tf32,false;tf32-on-pinned:--cuda-tf32,true,--cuda-pin,true}"
	device=cuda
	if ((dry)); then
		models=resnet18 max_batch=2 tb=1,2 configs="cpu:" device=cpu
	fi
	mkdir -p "${out}/resnet"
	if step resnet-export 180 "${py}" scripts/resnet_ladder.py export --out "${out}/resnet" --models "${models}"; then
		IFS=';' read -r -a cfgs <<<"${configs}"
		for cfg in "${cfgs[@]}"; do
			name="${cfg%%:*}"
			IFS=',' read -r -a flags <<<"${cfg#*:}"
			step "resnet-runner-${name}" 240 "${cs}" profile --provider "${provider}" "${flags[@]}" --model-dir "${out}/resnet" \
				--ladder "${models}" --max-batch "${max_batch}" --reps "${reps}" --warmup 2 --hop-samples 0 --quiet \
				--out "${out}/resnet-runner-${name}.json"
		done
		for tf in on off; do
			((dry)) && [[ ${tf} == on ]] && continue
			step "resnet-torch-tf32-${tf}" 180 "${py}" scripts/resnet_ladder.py time --device "${device}" --models "${models}" \
				--batches "${tb}" --tf32 "${tf}" --reps "${reps}" --warmup 3 --out "${out}/resnet-torch-tf32-${tf}.json"
		done
		# One table per TF32 setting: the runner configurations with that setting against PyTorch.
		for tf in on off; do
			[[ -f "${out}/resnet-torch-tf32-${tf}.json" ]] || continue
			runners=()
			for cfg in "${cfgs[@]}"; do
				name="${cfg%%:*}"
				[[ -f "${out}/resnet-runner-${name}.json" ]] || continue
				case "${name}" in
				*tf32-${tf}*) runners+=(--runner "${name}=${out}/resnet-runner-${name}.json") ;;
				*tf32-*) ;;
				*) runners+=(--runner "${name}=${out}/resnet-runner-${name}.json") ;;
				esac
			done
			((${#runners[@]} > 0)) || continue
			step "resnet-compare-tf32-${tf}" 30 "${py}" scripts/resnet_ladder.py compare --torch "${out}/resnet-torch-tf32-${tf}.json" \
				"${runners[@]}" --out "${out}/resnet-ratios-tf32-${tf}.md"
		done
	fi
fi

# --- bench --------------------------------------------------------------------------------
bench_flags=(--duration 8s --warmup 2s --half-load 0 --idle 50 --messages 50000 --rounds 1 --compute 1s)
((dry)) && bench_flags=(--duration 1s --warmup 0s --half-load 0 --idle 5 --messages 2000 --rounds 1 --compute 200ms --gears g1)
# shellcheck disable=SC2206
bench_flags+=(${GPU_CHECK_BENCH_FLAGS:-})
step "bench-${provider}" 240 "${cs}" bench --provider "${provider}" --runners 2 "${bench_flags[@]}" --json "${out}/bench-${provider}.json"

# --- summary ------------------------------------------------------------------------------
{
	echo "# GPU check, $(date -u +%FT%TZ)"
	echo
	echo '```'
	cat "${out}/host.txt"
	echo '```'
	echo
	echo "## Steps"
	echo
	echo '```'
	column -t -s $'\t' "${out}/steps.tsv" 2>/dev/null || cat "${out}/steps.tsv"
	echo "total: $(($(date +%s) - started))s"
	echo '```'
	if [[ -f "${out}/unit-summary.txt" ]]; then
		fenced "internal/onnxrt on the GPU" cat "${out}/unit-summary.txt"
	fi
	for f in "${out}"/mnist-*.log; do
		[[ -f "${f}" ]] || continue
		fenced "$(basename "${f}" .log)" cat "${f}"
	done
	for f in "${out}"/resnet-ratios-*.md; do
		[[ -f "${f}" ]] || continue
		echo
		echo "## ResNet ladder, $(basename "${f}" .md | sed 's/resnet-ratios-//')"
		echo
		cat "${f}"
	done
	for f in "${out}"/bench-*.log; do
		[[ -f "${f}" ]] || continue
		fenced "$(basename "${f}" .log)" grep -v '^bench: ' "${f}"
	done
} >"${out}/summary.md"
tar -czf "${out}.tar.gz" --exclude='*.onnx' -C "$(dirname "${out}")" "$(basename "${out}")"
say "done in $(($(date +%s) - started))s: ${out}/summary.md, ${out}.tar.gz"
cat "${out}/steps.tsv" >&2
exit "${failed}"
