// GitHub's own workflow parser (@actions/workflow-parser, the schema Actions and its editor use) on
// workflow files: prints one JSON line per file with its errors, exit 1 if any file has one.
//   node workflow_check.mjs FILE.yml [...]
import { readFile } from "node:fs/promises";
import { register } from "node:module";

// The parser imports its schema JSON without an import attribute, which Node 20 refuses: a loader
// hook adds the attribute.
const hook = `export async function load(url, context, next) {
  return next(url, url.endsWith(".json") ? { ...context, importAttributes: { type: "json" } } : context);
}`;
register(`data:text/javascript,${encodeURIComponent(hook)}`);
const { NoOperationTraceWriter, parseWorkflow, convertWorkflowTemplate } = await import("@actions/workflow-parser");

let failed = false;
for (const file of process.argv.slice(2)) {
  const content = await readFile(file, "utf8");
  const result = parseWorkflow({ name: file, content }, new NoOperationTraceWriter());
  const errors = result.context.errors.getErrors().map((e) => e.message);
  let jobs = [];
  if (errors.length === 0 && result.value) {
    const template = await convertWorkflowTemplate(result.context, result.value);
    errors.push(...result.context.errors.getErrors().map((e) => e.message));
    jobs = (template.jobs || []).map((j) => ({ id: j.id?.value ?? j.id, steps: (j.steps || []).length }));
  }
  failed ||= errors.length > 0;
  console.log(JSON.stringify({ file, errors, jobs }));
}
process.exit(failed ? 1 : 0);
