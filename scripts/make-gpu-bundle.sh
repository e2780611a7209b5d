#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on a GPU host that has no Go and cannot download
# anything, and cuts it into pieces small enough to send one per call to such a host.
#
#   scripts/make-gpu-bundle.sh              on a machine with Go (make gpu-bundle)
#   scripts/make-gpu-bundle.sh --assemble   on the GPU host, once every piece is there
#                                           (gpu-check.sh does this itself)
#
# Build: .gpu-bundle/stage/ gets
#   bin/cascadeserve    the CLI (cgo: it loads ONNX Runtime with dlopen; linked against this
#                       machine's glibc, so it runs on a host with the same or a newer glibc:
#                       built on Debian 12, glibc 2.36)
#   bin/onnxrt.test     internal/onnxrt's tests (go test -c), run from internal/onnxrt
#   .cache/onnxruntime/1.29.0-cuda/   the CUDA library set (scripts/install-onnxruntime.sh --cuda)
# then stage/ is packed as one gzip'd tar (gzip: every host can unpack it) and split into
# .gpu-bundle/part-NN-of-MM pieces of at most GPU_BUNDLE_PIECE_MIB MiB (default 54, so a piece
# and the repository's working tree fit one 64 MiB transfer), listed with their sha256 in
# .gpu-bundle/MANIFEST. .gpu-bundle/ is ignored by git: it never travels with the working tree
# unless named.
#
# Assemble: checks that every piece is there (and its sha256, where MANIFEST came along) and
# unpacks them into .gpu-bundle/stage/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo}"
bundle=".gpu-bundle"
die() {
	echo "make-gpu-bundle: $*" >&2
	exit 1
}

assemble() {
	local pieces=("${bundle}"/part-*)
	[[ -e "${pieces[0]}" ]] || die "no ${bundle}/part-* pieces here"
	local total="${pieces[0]##*-of-}"
	local n
	for ((n = 0; n < 10#${total}; n++)); do
		local want
		want="$(printf '%s/part-%02d-of-%s' "${bundle}" "${n}" "${total}")"
		[[ -f "${want}" ]] || die "piece ${want} is missing (have: ${pieces[*]}); send it, then run again"
	done
	if [[ -f "${bundle}/MANIFEST" ]]; then
		(cd "${bundle}" && sha256sum --quiet -c MANIFEST) || die "a piece does not match its sha256 in ${bundle}/MANIFEST"
	fi
	if [[ -f "${bundle}/stage/.assembled" ]] && [[ "$(cat "${bundle}/stage/.assembled")" == "$(ls -l "${bundle}"/part-* | sha256sum)" ]]; then
		echo "make-gpu-bundle: ${bundle}/stage is already assembled from these pieces" >&2
		return
	fi
	rm -rf "${bundle}/stage"
	mkdir -p "${bundle}/stage"
	if command -v gzip >/dev/null 2>&1; then
		cat "${bundle}"/part-*-of-"${total}" | tar -xzf - -C "${bundle}/stage"
	else
		cat "${bundle}"/part-*-of-"${total}" | python3 -c 'import gzip, sys, shutil; shutil.copyfileobj(gzip.GzipFile(fileobj=sys.stdin.buffer), sys.stdout.buffer)' |
			tar -xf - -C "${bundle}/stage"
	fi
	ls -l "${bundle}"/part-* | sha256sum >"${bundle}/stage/.assembled"
	echo "make-gpu-bundle: assembled ${bundle}/stage from ${total} pieces" >&2
	ls -lR "${bundle}/stage" >&2
}

build() {
	command -v go >/dev/null 2>&1 || die "go not found: build the bundle on a machine with Go"
	local stage="${bundle}/stage"
	rm -rf "${bundle}"
	mkdir -p "${stage}/bin" "${stage}/.cache/onnxruntime"
	echo "make-gpu-bundle: building the binaries..." >&2
	CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o "${stage}/bin/cascadeserve" ./cmd/cascadeserve
	CGO_ENABLED=1 go test -c -trimpath -ldflags="-s -w" -o "${stage}/bin/onnxrt.test" ./internal/onnxrt
	local lib
	lib="$(scripts/install-onnxruntime.sh --cuda 2>/dev/null | sed -n 's/^export CASCADE_ONNXRUNTIME_LIB=//p')"
	[[ -f "${lib}" ]] || die "scripts/install-onnxruntime.sh --cuda did not install the CUDA library set"
	cp -a "$(dirname "${lib}")" "${stage}/.cache/onnxruntime/"
	local glibc
	glibc="$(objdump -T "${stage}/bin/cascadeserve" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)"
	echo "make-gpu-bundle: packing (the binaries need ${glibc:-an unknown glibc} or newer)..." >&2
	local piece_mib="${GPU_BUNDLE_PIECE_MIB:-54}"
	tar -C "${stage}" -cf - . | gzip -6 >"${bundle}/bundle.tar.gz"
	local size pieces
	size=$(stat -c %s "${bundle}/bundle.tar.gz")
	pieces=$(((size + piece_mib * 1048576 - 1) / (piece_mib * 1048576)))
	split -b "${piece_mib}M" -d -a 2 "${bundle}/bundle.tar.gz" "${bundle}/part-"
	rm -f "${bundle}/bundle.tar.gz"
	local f
	for f in "${bundle}"/part-??; do
		mv "${f}" "${f}-of-$(printf '%02d' "${pieces}")"
	done
	(cd "${bundle}" && sha256sum part-* >MANIFEST)
	rm -rf "${stage}"
	echo "make-gpu-bundle: ${bundle}/ holds ${pieces} pieces ($((size / 1048576)) MiB):" >&2
	ls -l "${bundle}" >&2
	cat >&2 <<EOF
To run the check on a GPU host that has the repository's working tree but no Go: send the
pieces one per call (each call names one in 'carry'; a piece stays there while the host is
held), the last call with MANIFEST too, and run there
  scripts/gpu-check.sh --out /tmp/gpu-check
which assembles the pieces, runs everything in under 5 minutes, and leaves
/tmp/gpu-check/summary.md and /tmp/gpu-check.tar.gz.
EOF
}

case "${1:-}" in
"") build ;;
--assemble) assemble ;;
*) die "unknown argument $1 (want --assemble or none)" ;;
esac
