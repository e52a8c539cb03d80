#!/usr/bin/env bash
# test_roster.sh -- `caremesh roster import` (the roster_csv plugin) as an
# operator drives it: a realistic EHR export (BOM, CRLF, quoted names with
# commas, an address over two lines, US dates), re-import, every kind of bad
# row and bad file reported with its line and column and nothing written,
# --partial, --dry-run, a huge field, random bytes, progress on a large file.
# usage: test_roster.sh CAREMESH ROSTER_CSV.so
set -uo pipefail
bin=$1
so=$2
. "$(dirname "$0")/../lib/check.sh"

d=$tmp/node
"$bin" init --data "$d" --node-id clinic-a >/dev/null || { echo "FAIL: init"; exit 1; }
# The clinic's standing rules: its EHR's export names the MRN "Chart #" and
# writes dates US-style; notes never come in.
sed -i "s|^}|  plugins = { { name = \"roster_csv\", path = \"$so\", config = { map = { [\"Chart #\"] = \"identifier\|urn:oid:2.16.840.1.113883.19.5\", DOB = \"birthDate\|MM/DD/YYYY\", [\"Clinical Notes\"] = \"-\" } } } },\n}|" "$d/caremesh.conf"
roster() { "$bin" roster --data "$d" "$@"; }

cat >"$tmp/count.lua" <<'LUA'
local cm = require "caremesh"
print("patients=" .. cm.patient.count())
LUA
count() { "$bin" lua --data "$d" "$tmp/count.lua" 2>/dev/null | sed -n 's/^patients=//p'; }
audits() { sqlite3 "$d/caremesh.db" "SELECT count(*) FROM audit WHERE actor = 'plugin:roster_csv' AND action = 'patient.write'"; }
cat >"$tmp/show.lua" <<'LUA'
local cm = require "caremesh"
local p = assert(cm.patient.get((...)))
local ids = {}
for _, i in ipairs(p.identifiers or {}) do ids[#ids + 1] = (i.system or "") .. "=" .. i.value end
local conds = {}
for _, c in ipairs(p.conditions or {}) do conds[#conds + 1] = c.code end
print("family=" .. p.name.family)
print("given=" .. table.concat(p.name.given or {}, "+"))
print("birthDate=" .. p.birthDate .. " gender=" .. p.gender)
print("phone=" .. tostring(p.phone) .. " email=" .. tostring(p.email))
print("lines=" .. table.concat(p.address and p.address.line or {}, "|") .. " city=" .. tostring(p.address and p.address.city))
print("language=" .. tostring(p.language) .. " channel=" .. tostring(p.preferredChannel))
print("conditions=" .. table.concat(conds, ","))
print("identifiers=" .. table.concat(ids, ","))
print("version=" .. p.meta.versionId)
LUA
show() { out=$("$bin" lua --data "$d" "$tmp/show.lua" "$1" 2>&1); }

# ---- help and usage ----
expect 0 "roster --help" -- roster --help;                  has "roster --help" "usage: caremesh roster import"
expect 0 "import --help" -- roster import --help;           has "import --help" "--partial"
has "import --help" "--dry-run"; has "import --help" "--cohort NAME"
expect 2 "no subcommand" -- roster;                          has "no subcommand" "a subcommand is required"
expect 2 "unknown subcommand" -- roster export x.csv
expect 2 "no file" -- roster import;                         has "no file" "FILE is required"
expect 2 "unknown option" -- roster import x.csv --colour;  has "unknown option" "'--colour'"
expect 2 "dry-run and partial" -- roster import x.csv --dry-run --partial
expect 2 "bad cohort" -- roster import x.csv --cohort "flu 2026"; has "bad cohort" "--cohort"
expect 2 "bad map field" -- roster import x.csv --map "MRN=identifiers.mrn.x"
has "bad map field" 'unknown field "identifiers.mrn.x"'
expect 2 "bad map item" -- roster import x.csv --map "MRN"; has "bad map item" "expected COLUMN=FIELD"
expect 2 "bad date format" -- roster import x.csv --map "DOB=birthDate|MM-DD-YY"
has "bad date format" "unknown date format"
expect 1 "missing file" -- roster import "$tmp/none.csv";   has "missing file" "$tmp/none.csv"

# ---- a realistic export: BOM, CRLF, quotes, an address on two lines ----
{
  printf '\xef\xbb\xbf'
  printf 'Chart #,Last Name,First Name,Middle Name,DOB,Sex,Home Phone,Email,Address,City,State,Zip,Language,Contact Preference,Diagnoses,SSN,Clinical Notes\r\n'
  printf '100234,"Rivera, Jr.",Ana,Maria,04/12/1958,F,(555) 010-0201,ana.rivera@example.org,"12 Main St\r\nApt 4",Springfield,IL,62701,Spanish,Text,"E11;I10",123-45-6789,"Prefers mornings, ""no"" voicemail"\r\n'
  printf '100235,O'"'"'Brien,Sean,,1/2/1970,M,555-010-0202,,"1 ""The Cottages"" Lane",Springfield,IL,62702,English,Phone,,987-65-4321,\r\n'
  printf '100236,Nguyễn,Thị,,12/31/1947,female,+1 555 010 0203,,,Springfield,IL,,vi,,J44,,\r\n'
  printf ',,,,,,,,,,,,,,,,\r\n'
  printf '100237,Okafor,Chidi,,07/04/1949,U,555.010.0204,c.okafor@example.org,9 Elm Rd,Springfield,IL,62704,en,Email,I50.9,,\r\n'
} >"$tmp/roster.csv"
expect 0 "import a realistic roster" -- roster import "$tmp/roster.csv" --cohort flu-2026
has "import summary" "4 rows: 4 created, 0 updated, 0 unchanged, 0 refused; cohort flu-2026"
has "ignored columns named" "columns not imported: SSN, Clinical Notes"
same "patients after import" "$(count)" 4
same "every write audited" "$(audits)" 4
show pat-100234
has "quoted family with a comma" "family=Rivera, Jr."
has "given and middle" "given=Ana+Maria"
has "US date, F" "birthDate=1958-04-12 gender=female"
has "address over two lines" "lines=12 Main St|Apt 4 city=Springfield"
has "language and channel by name" "language=es channel=sms"
has "conditions split" "conditions=E11,I10"
has "MRN with its system, and the cohort" "identifiers=urn:oid:2.16.840.1.113883.19.5=100234,urn:caremesh:roster=flu-2026"
show pat-100235
has "quote in a name" "family=O'Brien"
has "doubled quotes" 'lines=1 "The Cottages" Lane'
has "one-digit US date" "birthDate=1970-01-02 gender=male"
show pat-100236
has "UTF-8 name" "family=Nguyễn"
if sqlite3 "$d/caremesh.db" .dump | grep -qE '123-45-6789|voicemail'; then bad "an ignored column reached the database"; else ok; fi

# ---- re-import: the same patients, never duplicates ----
expect 0 "re-import" -- roster import "$tmp/roster.csv" --cohort flu-2026
has "re-import changes nothing" "4 rows: 0 created, 0 updated, 4 unchanged, 0 refused"
same "no duplicates" "$(count)" 4
same "no writes when unchanged" "$(audits)" 4
sed 's/(555) 010-0201/(555) 010-0299/' "$tmp/roster.csv" >"$tmp/roster2.csv"
expect 0 "re-import with a new phone" -- roster import "$tmp/roster2.csv" --cohort copd-2026
has "one updated" "4 rows: 0 created, 4 updated, 0 unchanged, 0 refused; cohort copd-2026"
show pat-100234
has "phone updated" "phone=(555) 010-0299"
has "both cohorts kept" "urn:caremesh:roster=flu-2026,urn:caremesh:roster=copd-2026"
has "next version" "version=2"
same "still no duplicates" "$(count)" 4

# ---- bad rows: every one reported with line and column; nothing written ----
hdr='Chart #,Last Name,First Name,DOB,Sex,Home Phone,Address'
{
  echo "$hdr"
  echo '200001,Lee,Kim,02/30/1962,F,555-010-1000,'            # 2 no such date
  echo '200002,,Bo,01/01/1980,M,,'                             # 3 missing family
  echo '200003,Ng,Al,01/01/1980,Q,,"4 Oak St'                  # 4 unknown gender; address over 3 lines
  echo 'Unit 2'
  echo 'Rear"'
  echo '200004,Ng,Al,01/01/1980,M,call me,'                    # 7 bad phone
  echo '200001,Dup,X,01/01/1980,M,,'                           # 8 duplicate id
  echo '200005,Short,Row'                                      # 9 too few fields
  echo '200006,Ok,Fine,05/05/1990,F,,,extra'                   # 10 too many
  printf '200007,Bad\xff\xfe,x,05/05/1990,F,,\n'               # 11 invalid UTF-8
  echo '200008,Ok,Ok,1990-05-05,F,,'                           # 12 not MM/DD/YYYY
  echo ',Nobody,X,05/05/1990,F,,'                              # 13 empty id
  echo '200009,Good,Row,05/05/1990,F,,'                        # 14 fine
} >"$tmp/bad.csv"
before=$(audits)
expect 1 "bad rows" -- roster import "$tmp/bad.csv"
has "no such date"     'bad.csv:2: column "DOB": patient.birthDate: "1962-02-30" is not a valid date'
has "missing required" 'bad.csv:3: column "Last Name": patient.name.family: required'
has "unknown gender"   'bad.csv:4: column "Sex": patient.gender: unknown value "Q"'
has "line after a 3-line record" 'bad.csv:7: column "Home Phone": patient.phone: "call me" is not a phone number'
has "duplicate id"     'bad.csv:8: column "Chart #": patient pat-200001 is also on line 2'
has "too few fields"   'bad.csv:9: 3 fields where the header has 7: column "DOB" and after are missing'
has "too many fields"  'bad.csv:10: 8 fields where the header has 7: extra fields after column "Address"'
has "invalid UTF-8"    'bad.csv:11: column "Last Name": not valid UTF-8 (byte 4 of the field)'
has "date format"      'bad.csv:12: column "DOB": "1990-05-05" is not a date written MM/DD/YYYY'
has "empty id"         'bad.csv:13: column "Chart #": empty, and this column gives the patient id'
lacks "good row not reported" 'bad.csv:14'
has "all or nothing"   "10 of 11 rows refused: nothing written (--partial writes the good rows)"
same "bad rows write nothing" "$(count)" 4
same "bad rows audit no write" "$(audits)" "$before"

# ---- --dry-run ----
expect 1 "dry run of bad rows" -- roster import "$tmp/bad.csv" --dry-run
has "dry run reports" 'bad.csv:4: column "Sex"'
has "dry run summary" "dry run: 11 rows checked, 10 refused; nothing written"
printf 'Chart #,Last Name,First Name,DOB,Sex\n300001,New,Person,03/03/1993,F\n' >"$tmp/new.csv"
expect 0 "dry run of a good file" -- roster import "$tmp/new.csv" --dry-run
has "dry run good" "dry run: 1 rows checked, 0 refused; nothing written"
same "dry run writes nothing" "$(count)" 4
same "dry run audits no write" "$(audits)" "$before"

# ---- --partial ----
expect 1 "partial" -- roster import "$tmp/bad.csv" --partial --cohort partial-1
has "partial still reports" 'bad.csv:8: column "Chart #": patient pat-200001 is also on line 2'
has "partial summary" "11 rows: 1 created, 0 updated, 0 unchanged, 10 refused; cohort partial-1"
same "partial writes the good row" "$(count)" 5
show pat-200009
has "the good row" "family=Good"

# ---- bad files: reported with line and column, nothing written ----
printf 'Chart #,Last Name,First Name,DOB,Sex\n400001,A,B,01/01/1990,F\n400002,"Never closed,B,01/01/1990,F\n400003,C,D,01/01/1990,F\n' >"$tmp/open.csv"
expect 1 "unterminated quote" -- roster import "$tmp/open.csv"
has "unterminated quote" 'open.csv:3: column "Last Name": a quoted field is never closed'
has "unterminated: nothing" "nothing written"
printf 'Chart #,Last Name,First Name,DOB,Sex\n400001,A,B,01/01/1990,F\n400002,Ab"c,B,01/01/1990,F\n' >"$tmp/stray.csv"
expect 1 "stray quote" -- roster import "$tmp/stray.csv"
has "stray quote" 'stray.csv:3: column "Last Name": malformed quoting'
: >"$tmp/empty.csv"
expect 1 "empty file" -- roster import "$tmp/empty.csv";     has "empty file" "empty.csv: empty: no header row"
printf '\xef\xbb\xbf\r\n\r\n' >"$tmp/blank.csv"
expect 1 "blank lines only" -- roster import "$tmp/blank.csv"; has "blank lines only" "no header row"
printf 'Chart #,Last Name,First Name,DOB,Sex\r\n' >"$tmp/header.csv"
expect 1 "header only" -- roster import "$tmp/header.csv";   has "header only" "only a header: no patient rows"
expect 1 "unknown mapped column" -- roster import "$tmp/new.csv" --map "Mobile=phone"
has "unknown mapped column" 'new.csv:1: header: mapped column "Mobile" is not in the header (columns: Chart #, Last Name, First Name, DOB, Sex)'
printf 'Chart #,Last Name,First Name,Sex\n1,A,B,F\n' >"$tmp/nodob.csv"
expect 1 "no birth date column" -- roster import "$tmp/nodob.csv"; has "no birth date column" "no column gives birthDate"
printf 'Chart #,Last Name,Last Name,DOB,Sex\n1,A,B,01/01/1990,F\n' >"$tmp/twice.csv"
expect 1 "a header twice" -- roster import "$tmp/twice.csv"; has "a header twice" 'column "Last Name": twice in the header'
mkfifo "$tmp/fifo.csv"
expect 1 "not a regular file" -- timeout 10 "$bin" roster --data "$d" import "$tmp/fifo.csv"; has "not a regular file" "not a regular file"
same "bad files write nothing" "$(count)" 5

# ---- a huge field ----
{ echo 'Chart #,Last Name,First Name,DOB,Sex'; printf '500001,'; head -c 300000 /dev/zero | tr '\0' 'x'; echo ',B,01/01/1990,F'; } >"$tmp/huge.csv"
expect 1 "huge field" -- roster import "$tmp/huge.csv"
has "huge field named" 'huge.csv:2: column "Last Name": patient.name.family'
{ echo 'Chart #,Last Name,First Name,DOB,Sex'; printf '500002,"'; head -c 3000000 /dev/zero | tr '\0' 'y'; echo '",B,01/01/1990,F'; } >"$tmp/huger.csv"
expect 1 "field past the cap" -- roster import "$tmp/huger.csv"
has "field past the cap" 'huger.csv:2: column "Last Name": field longer than 1048576 bytes'
same "huge fields write nothing" "$(count)" 5

# ---- random bytes: refused cleanly, never a crash ----
for seed in 1 2 3 4 5 6 7 8; do
  LC_ALL=C awk -v seed="$seed" 'BEGIN { srand(seed); printf "Chart #,Last Name,First Name,DOB,Sex\n";
    for (i = 0; i < 3000; i++) { r = int(rand() * 260); c = r < 256 ? r : (r == 256 ? 34 : (r == 257 ? 44 : 10)); printf "%c", c } }' >"$tmp/fuzz$seed.csv"
  "$bin" roster --data "$d" import "$tmp/fuzz$seed.csv" >/dev/null 2>&1
  rc=$?
  if [ "$rc" -le 2 ]; then ok; else bad "random bytes (seed $seed): exit $rc"; fi
done
same "random bytes write nothing" "$(count)" 5

# ---- progress on a large file ----
LC_ALL=C awk 'BEGIN { print "Chart #,Last Name,First Name,DOB,Sex";
  for (i = 1; i <= 20001; i++) printf "%d,Family%d,Given,%02d/%02d/19%02d,%s\n", 700000 + i, i, i % 12 + 1, i % 28 + 1, i % 90 + 10, (i % 2 ? "F" : "M") }' >"$tmp/large.csv"
expect 0 "large file" -- roster import "$tmp/large.csv" --cohort big
has "progress at 10000" "roster import: 10000 rows read"
has "progress at 20000" "roster import: 20000 rows read"
has "large summary" "20001 rows: 20001 created"
same "large file written" "$(count)" 20006

check_done
