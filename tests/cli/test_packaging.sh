#!/usr/bin/env bash
# test_packaging.sh -- what ships beside the binary: the sample configuration
# (loads; names every key of docs/configuration.md; a broken copy is refused
# with its line) and the systemd unit (systemd-analyze verify, with nothing
# to say, and the hardening and reload keys it must carry).
# usage: test_packaging.sh CAREMESH SOURCE-DIR
set -uo pipefail
bin=$1 src=$2
. "$(dirname "$0")/../lib/check.sh"

conf=$src/packaging/caremesh.conf
out=$("$bin" config check "$conf" 2>&1); same "sample config loads" "$?:$out" "0:$conf: ok"
# every key of the reference table is in the sample, set (not only mentioned)
keys=$(sed -n 's/^| `\([a-z_.]*\)` |.*/\1/p' "$src/docs/configuration.md")
[ "$(wc -w <<<"$keys")" -ge 19 ] && ok || bad "the key table of docs/configuration.md was not found"
for k in $keys; do
  if grep -qE "^[^-]*\\b${k##*.}\\b *=" "$conf"; then ok; else bad "sample config lacks $k"; fi
done
cp "$conf" "$tmp/broken.conf"
sed -i 's/synchronous = "full"/synchronous = "fast"/' "$tmp/broken.conf"
line=$(grep -n 'synchronous = "fast"' "$tmp/broken.conf" | cut -d: -f1)
out=$("$bin" config check "$tmp/broken.conf" 2>&1); rc=$?
same "broken sample exit" $rc 1
has "broken sample named with its line" "$tmp/broken.conf:$line: store.synchronous: must be one of" "$out"
# the sample sets listen twice (federation, api): the error names the api's line
cp "$conf" "$tmp/broken2.conf"
sed -i 's/listen = "127.0.0.1:7600"/listen = "127.0.0.1:76000"/' "$tmp/broken2.conf"
line=$(grep -n 'listen = "127.0.0.1:76000"' "$tmp/broken2.conf" | cut -d: -f1)
out=$("$bin" config check "$tmp/broken2.conf" 2>&1)
has "broken api.listen named with its line" "$tmp/broken2.conf:$line: api.listen: must be" "$out"
"$bin" config check >/dev/null 2>&1; same "config check without FILE" $? 2

unit=$src/packaging/caremesh.service
for kv in 'Type=simple' 'User=caremesh' 'ExecReload=/bin/kill -HUP $MAINPID' 'KillSignal=SIGTERM' \
  'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ReadWritePaths=/var/lib/caremesh' 'PrivateTmp=yes' \
  'ExecStart=/usr/bin/caremesh serve --data /var/lib/caremesh --config /etc/caremesh/caremesh.conf'; do
  if grep -qxF -- "$kv" "$unit"; then ok; else bad "unit lacks $kv"; fi
done
# the unit's Documentation= names a page the operator guide installs there
doc=$(sed -n 's|^Documentation=file:/usr/share/doc/caremesh/||p' "$unit")
[ -n "$doc" ] && [ -f "$src/docs/$doc" ] && ok || bad "unit Documentation= names no page of docs/: '$doc'"
grep -qF 'install -D -m 0644 -t /usr/share/doc/caremesh docs/*.md' "$src/docs/operations.md" && ok ||
  bad "the operator guide does not install docs/ where the unit's Documentation= points"
# systemd-analyze (the systemd package, .ci/deps) checks every key and the
# command; it wants the binary where ExecStart says, so point it at ours.
sed "s|/usr/bin/caremesh|$bin|" "$unit" >"$tmp/caremesh.service"
out=$(systemd-analyze verify "$tmp/caremesh.service" 2>&1); rc=$?
same "systemd-analyze verify" "$rc:$out" "0:"
sed 's/^PrivateTmp=yes/PrivateTemp=yes/' "$tmp/caremesh.service" >"$tmp/typo.service"
out=$(systemd-analyze verify "$tmp/typo.service" 2>&1)
has "systemd-analyze catches a misspelt key" "Unknown key 'PrivateTemp'" "$out"

check_done test_packaging
