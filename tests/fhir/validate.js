// validate.js -- check every resource of a FHIR R4 JSON Bundle, and the
// bundle itself, with an independent validator (the npm package `fhir`,
// FHIR.js, R4 definitions), unknown elements counted as errors.
//
//   node validate.js MODULES_DIR BUNDLE.json
//
// MODULES_DIR holds node_modules/fhir (tests/fhir/setup.sh installs it).
// Prints each error as "entry[i] Type/id: location: message" and a closing
// line "N resources, N errors"; exits 1 when there is any error, 2 when the
// file is not a bundle.
'use strict';
const fs = require('fs');
const path = require('path');

const [modules, file] = process.argv.slice(2);
if (!modules || !file) {
  console.error('usage: node validate.js MODULES_DIR BUNDLE.json');
  process.exit(2);
}
const { Fhir } = require(path.join(path.resolve(modules), 'node_modules', 'fhir'));
const fhir = new Fhir();

let bundle;
try {
  bundle = JSON.parse(fs.readFileSync(file, 'utf8'));
} catch (e) {
  console.error(`${file}: ${e.message}`);
  process.exit(2);
}
if (!bundle || bundle.resourceType !== 'Bundle' || !Array.isArray(bundle.entry)) {
  console.error(`${file}: not a Bundle with entries`);
  process.exit(2);
}

const options = { errorOnUnexpected: true };
const bad = (m) => m.severity === 'error' || m.severity === 'fatal';
let errors = 0;
bundle.entry.forEach((entry, i) => {
  const r = entry.resource || {};
  for (const m of fhir.validate(r, options).messages.filter(bad)) {
    console.log(`entry[${i}] ${r.resourceType}/${r.id}: ${m.location}: ${m.message}`);
    errors++;
  }
});
for (const m of fhir.validate(bundle, options).messages.filter(bad)) {
  console.log(`Bundle: ${m.location}: ${m.message}`);
  errors++;
}
console.log(`${bundle.entry.length} resources, ${errors} errors`);
process.exit(errors ? 1 : 0);
