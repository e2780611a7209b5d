#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that internal/onnxrt loads at run time.
#
# The library comes from the npm package onnxruntime-node (the official ONNX Runtime
# build for Linux x64, CPU execution provider). Only libonnxruntime.so.1 is extracted,
# its sha256 is checked, and it is installed to
#   <repo>/.cache/onnxruntime/<version>/libonnxruntime.so.1
# which is where internal/onnxrt.FindLibrary looks (CASCADE_ONNXRUNTIME_LIB overrides).
#
# Idempotent: when the file is already installed with the expected hash, nothing is done.
# Quiet on success; the last line printed is the library path.
#
# Environment:
#   ORT_NPM_TARBALL  optional path to an already downloaded onnxruntime-node-<version>.tgz
#                    (skips `npm pack`; the hash is still verified).
set -euo pipefail

readonly ORT_VERSION="1.30.0"
readonly ORT_SHA256="ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23"
readonly MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"

die() {
	echo "install-onnxruntime: $*" >&2
	exit 1
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${repo_root}/.cache/onnxruntime/${ORT_VERSION}"
dest="${dest_dir}/libonnxruntime.so.1"

sha256_of() {
	sha256sum "$1" | cut -d' ' -f1
}

if [[ -f "${dest}" && "$(sha256_of "${dest}")" == "${ORT_SHA256}" ]]; then
	echo "${dest}"
	exit 0
fi

case "$(uname -s)/$(uname -m)" in
Linux/x86_64) ;;
*) die "only linux/x86_64 is supported by this script; build or download libonnxruntime ${ORT_VERSION} yourself and set CASCADE_ONNXRUNTIME_LIB" ;;
esac

command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (install coreutils)"
command -v tar >/dev/null 2>&1 || die "tar not found"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

tarball="${ORT_NPM_TARBALL:-}"
if [[ -n "${tarball}" ]]; then
	[[ -f "${tarball}" ]] || die "ORT_NPM_TARBALL=${tarball}: no such file"
else
	command -v npm >/dev/null 2>&1 ||
		die "npm not found: install Node.js/npm (e.g. apt-get install npm), or set CASCADE_ONNXRUNTIME_LIB to an existing libonnxruntime.so ${ORT_VERSION}"
	if ! (cd "${tmp}" && npm pack --silent "onnxruntime-node@${ORT_VERSION}" >"${tmp}/npm.log" 2>&1); then
		cat "${tmp}/npm.log" >&2
		die "npm pack onnxruntime-node@${ORT_VERSION} failed"
	fi
	tarball="${tmp}/onnxruntime-node-${ORT_VERSION}.tgz"
	[[ -f "${tarball}" ]] || die "npm pack did not produce ${tarball##*/}"
fi

tar -xzf "${tarball}" -C "${tmp}" "${MEMBER}" 2>"${tmp}/tar.log" || {
	cat "${tmp}/tar.log" >&2
	die "${MEMBER} not found in ${tarball}"
}

got="$(sha256_of "${tmp}/${MEMBER}")"
[[ "${got}" == "${ORT_SHA256}" ]] ||
	die "sha256 mismatch for libonnxruntime.so.1: got ${got}, want ${ORT_SHA256}"

mkdir -p "${dest_dir}"
# Install atomically so a concurrent reader never sees a half-written library.
install -m 0644 "${tmp}/${MEMBER}" "${dest}.tmp.$$"
mv -f "${dest}.tmp.$$" "${dest}"
echo "${dest}"
