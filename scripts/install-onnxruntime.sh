#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that internal/onnxrt loads at run time.
#
#   install-onnxruntime.sh               CPU library (the default; what CI and `make setup` use)
#   install-onnxruntime.sh --cuda        CUDA library set, then checks the host's CUDA libraries
#   install-onnxruntime.sh --check-cuda  only the host check (exit 1 if a library is missing)
#
# CPU: the library comes from the npm package onnxruntime-node (the official ONNX Runtime
# build for Linux x64, CPU execution provider). Only libonnxruntime.so.1 is extracted,
# its sha256 is checked, and it is installed to
#   <repo>/.cache/onnxruntime/<version>/libonnxruntime.so.1
# which is where internal/onnxrt.FindLibrary looks (CASCADE_ONNXRUNTIME_LIB overrides).
# Quiet on success; the last line printed is the library path.
#
# CUDA (--cuda): ONNX Runtime 1.29.0, the version for which a working core + CUDA provider
# pair is published as npm packages (see the README, "Running on GPUs"):
#   libonnxruntime.so.1                 from onnxruntime-node@1.29.0 (its CUDA provider bridge is built in)
#   libonnxruntime_providers_cuda.so    from com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
#   libonnxruntime_providers_shared.so  from the same package
# each checked against its sha256 and installed side by side (the core loads the provider
# from its own folder) to
#   <repo>/.cache/onnxruntime/1.29.0-cuda/
# which is where internal/onnxrt.FindLibraryFor looks for the cuda provider. The provider
# is 230 MB: it lives in .cache/ (ignored by git), never in the repository. Then the host is
# checked for the CUDA 13 and cuDNN 9 user libraries the provider loads (report on stderr).
# stdout gets the settings to use, so `eval "$(scripts/install-onnxruntime.sh --cuda)"`
# applies them:
#   export CASCADE_ONNXRUNTIME_LIB=<repo>/.cache/onnxruntime/1.29.0-cuda/libonnxruntime.so.1
#   export LD_LIBRARY_PATH=...   (only when CUDA libraries were found outside the loader's path)
#
# Idempotent: files already installed with the expected hash are not fetched again.
#
# Environment:
#   ORT_NPM_TARBALL           optional path to an already downloaded onnxruntime-node-1.30.0.tgz
#                             (CPU; skips `npm pack`; the hash is still verified).
#   ORT_CUDA_CORE_TARBALL     the same for onnxruntime-node-1.29.0.tgz (--cuda).
#   ORT_CUDA_PROVIDER_TARBALL the same for com.github.asus4.onnxruntime.linux-x64-gpu-0.4.9.tgz (--cuda).
#   CASCADE_CUDA_LIB_DIRS     extra folders (colon-separated) the host check searches first.
set -euo pipefail

readonly ORT_VERSION="1.30.0"
readonly ORT_SHA256="ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23"
readonly MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"

readonly CUDA_ORT_VERSION="1.29.0"
readonly CUDA_CORE_PACKAGE="onnxruntime-node@1.29.0"
readonly CUDA_CORE_TGZ="onnxruntime-node-1.29.0.tgz"
readonly CUDA_CORE_MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
readonly CUDA_CORE_SHA256="89688f5cf51c7e31befbb7b9101bc027799009b18d1baa9a5b1146a72e69538d"
readonly CUDA_PROVIDER_PACKAGE="com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9"
readonly CUDA_PROVIDER_TGZ="com.github.asus4.onnxruntime.linux-x64-gpu-0.4.9.tgz"
readonly CUDA_PROVIDER_DIR="package/Plugins/Linux/x64"
readonly CUDA_PROVIDER_SHA256="56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037"
readonly CUDA_SHARED_SHA256="c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772"

die() {
	echo "install-onnxruntime: $*" >&2
	exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sha256_of() {
	sha256sum "$1" | cut -d' ' -f1
}

# has_hash FILE SHA256: the file exists with that hash.
has_hash() {
	[[ -f "$1" && "$(sha256_of "$1")" == "$2" ]]
}

check_platform() {
	case "$(uname -s)/$(uname -m)" in
	Linux/x86_64) ;;
	*) die "only linux/x86_64 is supported by this script; build or download libonnxruntime $1 yourself and set CASCADE_ONNXRUNTIME_LIB" ;;
	esac
	command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (install coreutils)"
	command -v tar >/dev/null 2>&1 || die "tar not found"
}

# fetch_tarball PACKAGE@VERSION TGZ_NAME OVERRIDE TMPDIR: prints the tarball's path.
fetch_tarball() {
	local pkg="$1" tgz="$2" override="$3" tmp="$4"
	if [[ -n "${override}" ]]; then
		[[ -f "${override}" ]] || die "${override}: no such file"
		echo "${override}"
		return
	fi
	command -v npm >/dev/null 2>&1 ||
		die "npm not found: install Node.js/npm (e.g. apt-get install npm), or set CASCADE_ONNXRUNTIME_LIB to an existing library"
	if ! (cd "${tmp}" && npm pack --silent "${pkg}" >"${tmp}/npm.log" 2>&1); then
		cat "${tmp}/npm.log" >&2
		die "npm pack ${pkg} failed"
	fi
	[[ -f "${tmp}/${tgz}" ]] || die "npm pack did not produce ${tgz}"
	echo "${tmp}/${tgz}"
}

# extract TARBALL MEMBER TMPDIR WANT_SHA256 DEST: extracts, verifies and installs one file
# atomically, so a concurrent reader never sees a half-written library.
extract() {
	local tarball="$1" member="$2" tmp="$3" want="$4" dest="$5"
	tar -xzf "${tarball}" -C "${tmp}" "${member}" 2>"${tmp}/tar.log" || {
		cat "${tmp}/tar.log" >&2
		die "${member} not found in ${tarball}"
	}
	local got
	got="$(sha256_of "${tmp}/${member}")"
	[[ "${got}" == "${want}" ]] ||
		die "sha256 mismatch for ${member##*/} from ${tarball##*/}: got ${got}, want ${want}"
	mkdir -p "$(dirname "${dest}")"
	install -m 0644 "${tmp}/${member}" "${dest}.tmp.$$"
	mv -f "${dest}.tmp.$$" "${dest}"
	rm -f "${tmp}/${member}"
}

install_cpu() {
	local dest_dir="${repo_root}/.cache/onnxruntime/${ORT_VERSION}"
	local dest="${dest_dir}/libonnxruntime.so.1"
	if has_hash "${dest}" "${ORT_SHA256}"; then
		echo "${dest}"
		return
	fi
	check_platform "${ORT_VERSION}"
	local tmp
	tmp="$(mktemp -d)"
	trap "rm -rf '${tmp}'" EXIT
	local tarball
	tarball="$(fetch_tarball "onnxruntime-node@${ORT_VERSION}" "onnxruntime-node-${ORT_VERSION}.tgz" "${ORT_NPM_TARBALL:-}" "${tmp}")"
	extract "${tarball}" "${MEMBER}" "${tmp}" "${ORT_SHA256}" "${dest}"
	echo "${dest}"
}

# --- the host check -------------------------------------------------------------------

# The CUDA 13 / cuDNN 9 user libraries libonnxruntime_providers_cuda.so (ORT 1.29.0) loads
# (its DT_NEEDED entries, plus cuDNN 9, which it opens at run time), with the Python wheel
# that usually provides each one.
readonly CUDA_LIBS=(
	"libcudart.so.13:nvidia-cuda-runtime (site-packages/nvidia/cu13/lib)"
	"libcublas.so.13:nvidia-cublas (site-packages/nvidia/cu13/lib)"
	"libcublasLt.so.13:nvidia-cublas (site-packages/nvidia/cu13/lib)"
	"libcurand.so.10:nvidia-curand (site-packages/nvidia/cu13/lib)"
	"libcudnn.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_graph.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_ops.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_cnn.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_engines_precompiled.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_engines_runtime_compiled.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
	"libcudnn_heuristic.so.9:nvidia-cudnn-cu13 (site-packages/nvidia/cudnn/lib)"
)

# candidate_dirs: folders outside the loader's path where CUDA libraries usually are.
candidate_dirs() {
	local d
	if [[ -n "${CASCADE_CUDA_LIB_DIRS:-}" ]]; then
		tr ':' '\n' <<<"${CASCADE_CUDA_LIB_DIRS}"
	fi
	local py
	for py in python3 python; do
		command -v "${py}" >/dev/null 2>&1 || continue
		"${py}" - <<'EOF' 2>/dev/null || true
import site, sys
dirs = list(getattr(site, "getsitepackages", lambda: [])())
try:
    dirs.append(site.getusersitepackages())
except Exception:
    pass
dirs += [p for p in sys.path if p.endswith("-packages")]
seen = set()
for d in dirs:
    for sub in ("nvidia/cu13/lib", "nvidia/cudnn/lib", "nvidia/cublas/lib", "nvidia/cuda_runtime/lib",
                "nvidia/curand/lib"):
        p = d + "/" + sub
        if p not in seen:
            seen.add(p)
            print(p)
EOF
	done
	for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
		/usr/lib/x86_64-linux-gnu /usr/lib64 /opt/nvidia/cudnn/lib; do
		echo "${d}"
	done
}

# check_cuda_host: reports (stderr) every library the CUDA provider needs and where it was
# found; prints (stdout) an LD_LIBRARY_PATH export when some were found only outside the
# loader's path. Returns 1 when a library is missing.
check_cuda_host() {
	local loader_dirs=() d
	if [[ -n "${LD_LIBRARY_PATH:-}" ]]; then
		IFS=':' read -r -a loader_dirs <<<"${LD_LIBRARY_PATH}"
	fi
	local ldcache=""
	if command -v ldconfig >/dev/null 2>&1; then
		ldcache="$(ldconfig -p 2>/dev/null || true)"
	elif [[ -x /sbin/ldconfig ]]; then
		ldcache="$(/sbin/ldconfig -p 2>/dev/null || true)"
	fi
	local extra=()
	mapfile -t extra < <(candidate_dirs | awk 'NF && !seen[$0]++')

	local missing=() add=() entry lib where found
	echo "CUDA provider host check (ONNX Runtime ${CUDA_ORT_VERSION}, CUDA 13, cuDNN 9):" >&2
	if command -v nvidia-smi >/dev/null 2>&1; then
		if gpus="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)" && [[ -n "${gpus}" ]]; then
			echo "  GPU: ${gpus//$'\n'/; }" >&2
		else
			echo "  GPU: nvidia-smi found but reports no GPU" >&2
		fi
	else
		echo "  GPU: nvidia-smi not found (no NVIDIA driver on this host?)" >&2
	fi
	if grep -q 'libcuda\.so\.1 ' <<<"${ldcache}"; then
		echo "  ok       libcuda.so.1 (driver)" >&2
	else
		echo "  MISSING  libcuda.so.1: the NVIDIA driver's library; install the driver (580 or newer for CUDA 13)" >&2
		missing+=("libcuda.so.1")
	fi
	for entry in "${CUDA_LIBS[@]}"; do
		lib="${entry%%:*}"
		where="${entry#*:}"
		found=""
		for d in "${loader_dirs[@]}"; do
			if [[ -n "${d}" && -e "${d}/${lib}" ]]; then
				found="${d} (LD_LIBRARY_PATH)"
				break
			fi
		done
		if [[ -z "${found}" ]] && grep -q "^[[:space:]]*${lib//./\\.} " <<<"${ldcache}"; then
			found="ldconfig cache"
		fi
		if [[ -z "${found}" ]]; then
			for d in "${extra[@]}"; do
				if [[ -e "${d}/${lib}" ]]; then
					found="${d} (not on the loader's path: add it to LD_LIBRARY_PATH)"
					[[ " ${add[*]-} " == *" ${d} "* ]] || add+=("${d}")
					break
				fi
			done
		fi
		if [[ -n "${found}" ]]; then
			printf '  ok       %-40s %s\n' "${lib}" "${found}" >&2
		else
			printf '  MISSING  %-40s usually from the wheel %s, or /usr/local/cuda/lib64\n' "${lib}" "${where}" >&2
			missing+=("${lib}")
		fi
	done
	if ((${#add[@]} > 0)); then
		local joined
		joined="$(
			IFS=':'
			echo "${add[*]}"
		)"
		echo "export LD_LIBRARY_PATH=${joined}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
	fi
	if ((${#missing[@]} > 0)); then
		echo "  missing: ${missing[*]}" >&2
		echo "  (e.g. pip install nvidia-cuda-runtime nvidia-cublas nvidia-curand nvidia-cudnn-cu13, or the CUDA 13 toolkit and cuDNN 9)" >&2
		return 1
	fi
	echo "  all CUDA libraries found" >&2
	return 0
}

install_cuda() {
	local dest_dir="${repo_root}/.cache/onnxruntime/${CUDA_ORT_VERSION}-cuda"
	local core="${dest_dir}/libonnxruntime.so.1"
	local provider="${dest_dir}/libonnxruntime_providers_cuda.so"
	local shared="${dest_dir}/libonnxruntime_providers_shared.so"
	if ! has_hash "${core}" "${CUDA_CORE_SHA256}" ||
		! has_hash "${provider}" "${CUDA_PROVIDER_SHA256}" ||
		! has_hash "${shared}" "${CUDA_SHARED_SHA256}"; then
		check_platform "${CUDA_ORT_VERSION}"
		local tmp tarball
		tmp="$(mktemp -d)"
		trap "rm -rf '${tmp}'" EXIT
		if ! has_hash "${core}" "${CUDA_CORE_SHA256}"; then
			echo "install-onnxruntime: fetching ${CUDA_CORE_PACKAGE} (ONNX Runtime ${CUDA_ORT_VERSION} core)..." >&2
			tarball="$(fetch_tarball "${CUDA_CORE_PACKAGE}" "${CUDA_CORE_TGZ}" "${ORT_CUDA_CORE_TARBALL:-}" "${tmp}")"
			extract "${tarball}" "${CUDA_CORE_MEMBER}" "${tmp}" "${CUDA_CORE_SHA256}" "${core}"
			[[ -n "${ORT_CUDA_CORE_TARBALL:-}" ]] || rm -f "${tarball}"
		fi
		if ! has_hash "${provider}" "${CUDA_PROVIDER_SHA256}" || ! has_hash "${shared}" "${CUDA_SHARED_SHA256}"; then
			echo "install-onnxruntime: fetching ${CUDA_PROVIDER_PACKAGE} (CUDA provider, ~180 MB)..." >&2
			tarball="$(fetch_tarball "${CUDA_PROVIDER_PACKAGE}" "${CUDA_PROVIDER_TGZ}" "${ORT_CUDA_PROVIDER_TARBALL:-}" "${tmp}")"
			extract "${tarball}" "${CUDA_PROVIDER_DIR}/libonnxruntime_providers_cuda.so" "${tmp}" "${CUDA_PROVIDER_SHA256}" "${provider}"
			extract "${tarball}" "${CUDA_PROVIDER_DIR}/libonnxruntime_providers_shared.so" "${tmp}" "${CUDA_SHARED_SHA256}" "${shared}"
		fi
	fi
	echo "install-onnxruntime: ONNX Runtime ${CUDA_ORT_VERSION} with the CUDA provider is in ${dest_dir}" >&2
	echo "export CASCADE_ONNXRUNTIME_LIB=${core}"
	check_cuda_host || echo "install-onnxruntime: the CUDA provider will not load until the missing libraries are installed" >&2
}

case "${1:-}" in
"") install_cpu ;;
--cuda) install_cuda ;;
--check-cuda) check_cuda_host ;;
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) die "unknown argument $1 (want --cuda, --check-cuda or none)" ;;
esac
