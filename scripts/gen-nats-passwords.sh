#!/bin/sh
# Writes a compose .env file with a random password for every
# CASCADE_*_PASSWORD variable of deploy/nats/accounts.conf (32 letters each:
# safe in the server's config and in NATS URLs). deploy/compose.yaml
# requires them; there are no defaults. It never overwrites an existing file.
#   scripts/gen-nats-passwords.sh [FILE]    (default: deploy/.env)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/deploy/.env}
vars=$(grep -o '\$CASCADE_[A-Z0-9_]*_PASSWORD' "$root/deploy/nats/accounts.conf" | tr -d '$' | sort -u)
if [ -z "$vars" ]; then
	echo "no CASCADE_*_PASSWORD variables in $root/deploy/nats/accounts.conf" >&2
	exit 1
fi
if [ -e "$out" ]; then
	echo "$out exists; not overwriting it (delete it to make new passwords)" >&2
	exit 1
fi

password() {
	p=$(head -c 4096 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z' | cut -c 1-32)
	if [ ${#p} -ne 32 ]; then
		echo "could not read enough random bytes" >&2
		exit 1
	fi
	printf '%s' "$p"
}

umask 077
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
{
	echo "# NATS passwords of deploy/nats/accounts.conf (scripts/gen-nats-passwords.sh). Keep secret."
	for v in $vars; do
		p=$(password)
		echo "$v=$p"
	done
} >"$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
