#!/usr/bin/env node
// Refuses an old Node.js in one line, before anything else loads (npm's pre-scripts run it: prestart, predemo,
// pretest, ...). The version needed is package.json "engines.node". Plain ES5 CommonJS on purpose: it must run
// on whatever old Node a machine has, where the project's own code would crash with a stack trace instead.
//
//   node scripts/check-node.cjs     # exit 0 when this Node satisfies engines.node; else one line on stderr, exit 1
'use strict';
var fs = require('fs');
var path = require('path');

var pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
var range = String((pkg.engines && pkg.engines.node) || '').trim();

// "22.19" -> [22, 19, 0]; missing parts are 0 (an "x" or "*" too, which only loosens the bound).
function parse(v) {
  var parts = String(v).replace(/^v/, '').split('.');
  var out = [];
  for (var i = 0; i < 3; i++) {
    var n = parseInt(parts[i], 10);
    out.push(isNaN(n) ? 0 : n);
  }
  return out;
}
function cmp(a, b) {
  for (var i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}
// One comparator of a semver range: >=, >, <=, <, =, ^, ~ or a bare version (^ and ~ as npm reads them).
function satisfies(version, comparator) {
  var m = /^(>=|<=|>|<|=|\^|~)?\s*v?(\d+(?:\.(?:\d+|x|\*))*)$/.exec(comparator);
  if (!m) return null;
  var op = m[1] || '=';
  var want = parse(m[2]);
  var given = m[2].split('.').length;
  var c = cmp(version, want);
  if (op === '>=') return c >= 0;
  if (op === '>') return c > 0;
  if (op === '<=') return c <= 0;
  if (op === '<') return c < 0;
  if (op === '^') return c >= 0 && (want[0] > 0 ? version[0] === want[0] : version[0] === 0 && version[1] === want[1]);
  if (op === '~' || given < 3) return c >= 0 && version[0] === want[0] && (given < 2 || version[1] === want[1]);
  return c === 0;
}
// "a b || c": any alternative whose comparators all hold. null when the range is not understood.
function inRange(version, text) {
  var alternatives = text.split('||');
  for (var i = 0; i < alternatives.length; i++) {
    var comparators = alternatives[i].trim().replace(/(>=|<=|>|<|=|\^|~)\s+/g, '$1').split(/\s+/);
    var all = true;
    for (var j = 0; j < comparators.length; j++) {
      var ok = satisfies(version, comparators[j]);
      if (ok === null) return null;
      if (!ok) all = false;
    }
    if (all) return true;
  }
  return false;
}

if (range !== '') {
  var ok = inRange(parse(process.versions.node), range);
  if (ok === false) {
    var lower = /^>=\s*v?(\d+(?:\.\d+)*)$/.exec(range);
    var needed = lower ? lower[1] + ' or later' : 'a version in "' + range + '"';
    process.stderr.write(
      pkg.name + ' needs Node.js ' + needed + ' (this is ' + process.version + '); ' +
        'run scripts/setup.sh or use the version in .nvmrc\n'
    );
    process.exit(1);
  }
  // ok === null: a range this little parser does not read; npm's engine-strict still guards installs.
}
