// `npm run keygen -- <tenant-id>`: a new random tenant key and the sha256 form to put in the tenants file.
import { generateKey } from '../access/tenants.js';

const id = process.argv[2];
if (!id || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(id)) {
  process.stderr.write('usage: npm run keygen -- <tenant-id>   (1-64 letters, digits, ".", "_" or "-")\n');
  process.exit(2);
}
const { key, hashed } = generateKey();
process.stdout.write(
  `tenant:  ${id}\n` +
    `key:     ${key}\n` +
    `hashed:  ${hashed}\n\n` +
    `Give the key to the team (it is shown once). Put only the hashed form in the tenants file:\n` +
    `  { "id": "${id}", "keys": ["${hashed}"] }\n`,
);
