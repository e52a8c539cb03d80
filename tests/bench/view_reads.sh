#!/usr/bin/env bash
# view_reads.sh -- what the `instance` view costs its readers: the API's
# instance list (a status filter, 1000 rows), one instance's get, the
# engine's load of one instance and the count by workflow, state and
# status (through the view, and as /metrics reads it: from the tables),
# each as instructions (callgrind, the sqlite3 shell's run of the query
# less its run of `SELECT 1`), on a database `caremesh init`
# made (the schema as built) filled with N instances of one history row
# each, and on a copy shaped as schema 12 (steps and updated kept in
# instance_step, the view reading them there).
# usage: view_reads.sh CAREMESH [N]   (N: instances, default 20000)
set -euo pipefail
bin=$(realpath "$1")
n=${2:-20000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v valgrind >/dev/null && command -v sqlite3 >/dev/null ||
  { echo "view_reads.sh: needs valgrind and sqlite3" >&2; exit 1; }
"$bin" init --data "$tmp/node" --node-id bench >/dev/null
db=$tmp/node/caremesh.db
sqlite3 "$db" <<EOF
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $n)
INSERT INTO instance_base(seq, id, workflow, rev, status, input, created)
  SELECT i, 'w-' || i, 'w' || (i % 5), 1, CASE WHEN i % 3 = 0 THEN 'done' ELSE 'running' END,
         '{"patient":"p-' || i || '"}', '2026-01-01T00:00:00.000Z' FROM k;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $n)
INSERT INTO history(seq, instance, step, prev, at, event, from_state, to_state)
  SELECT i, 'w-' || i, 1, NULL, '2026-01-02T00:00:00.000Z', 'start', NULL, 's' || (i % 7) FROM k;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < $n)
INSERT INTO instance_step(seq, state, ctx, hist) SELECT i, 's' || (i % 7), '{}', i FROM k;
VACUUM;
EOF
old=$tmp/schema12.db
cp "$db" "$old"
sqlite3 "$old" <<'EOF'
DROP VIEW instance;
ALTER TABLE instance_step ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instance_step ADD COLUMN updated TEXT NOT NULL DEFAULT '';
UPDATE instance_step SET (steps, updated) = (SELECT h.step, h.at FROM history h WHERE h.seq = hist);
CREATE VIEW instance AS
  SELECT b.seq AS seq, b.id AS id, b.workflow AS workflow, b.rev AS rev,
         s.state AS state, b.status AS status, b.input AS input, s.ctx AS ctx,
         b.parent AS parent, s.steps AS steps, b.created AS created,
         s.updated AS updated, s.hist AS hist
  FROM instance_base b JOIN instance_step s ON s.seq = b.seq;
VACUUM;
EOF
# instructions of the sqlite3 shell running query $2 on database $1
ir() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null sqlite3 "$1" "$2" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
names=("list" "get" "engine load" "count (view)" "count (tables)")
queries=(
  "SELECT seq, id, workflow, rev, state, status, json_extract(input, '\$.patient'), created, updated FROM instance WHERE seq > 0 AND status = 'done' ORDER BY seq LIMIT 1000"
  "SELECT id, workflow, rev, state, status, input, ctx, parent, created, updated FROM instance WHERE id = 'w-777'"
  "SELECT id, workflow, rev, state, status, coalesce(parent, ''), steps, input, ctx, coalesce(hist, 0), seq FROM instance WHERE id = 'w-777'"
  "SELECT workflow, state, status, count(*) FROM instance GROUP BY workflow, state, status ORDER BY 1, 2, 3"
  "SELECT b.workflow, s.state, b.status, count(*) FROM instance_base b JOIN instance_step s ON s.seq = b.seq GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
base_old=$(ir "$old" "SELECT 1")
base_new=$(ir "$db" "SELECT 1")
printf '%-14s %14s %14s %8s\n' query schema-12 built change
for i in "${!queries[@]}"; do
  a=$(($(ir "$old" "${queries[$i]}") - base_old))
  b=$(($(ir "$db" "${queries[$i]}") - base_new))
  printf '%-14s %14d %14d %+7.1f%%\n' "${names[$i]}" "$a" "$b" "$(echo "($b - $a) * 100 / $a" | bc -l)"
done
