// Khronos glTF validator on GLB files: prints one JSON report per file, exit 1 if any has errors.
//   node validate.mjs FILE.glb [...]
import { readFile } from "node:fs/promises";
import validator from "gltf-validator";

let failed = false;
for (const file of process.argv.slice(2)) {
  const bytes = new Uint8Array(await readFile(file));
  let report;
  try {
    const r = await validator.validateBytes(bytes, { maxIssues: 100, externalResourceFunction: () => Promise.reject(new Error("no external resources")) });
    report = { file, ...r.issues, info: r.info, validatorVersion: r.validatorVersion };
  } catch (e) {
    report = { file, numErrors: 1, numWarnings: 0, numInfos: 0, numHints: 0, messages: [{ code: "EXCEPTION", message: String(e) }] };
  }
  failed ||= report.numErrors > 0;
  console.log(JSON.stringify(report));
}
process.exit(failed ? 1 : 0);
