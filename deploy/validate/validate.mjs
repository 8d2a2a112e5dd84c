#!/usr/bin/env node
// validate.mjs [--json] [DIR]: offline validation of the Kubernetes manifests in DIR (default ../k8s).
//
// For every document of every *.yaml file (kustomization.yaml aside):
//   1. schema: the kubernetes-models class for its apiVersion/kind validates it against the
//      Kubernetes OpenAPI schema (types, enums, required fields, formats);
//   2. strict fields: the schema check allows unknown fields (a misspelt `readinesProbe` would
//      pass), so the document is also type-checked by the TypeScript compiler against the
//      model's interface as an object literal: any field the API does not have is an error,
//      at any depth (what `kubectl apply --validate=strict` refuses).
// kustomization.yaml: every resource exists, every manifest but secret.yaml is listed, and the
// secretGenerator makes the same Secrets with the same keys as the placeholders in secret.yaml.
//
// Prints one line per document; exit 0 if all pass, 1 on any error, 2 on usage.
// --json: only parse, and print {"file.yaml": [documents...], ...} (kustomization.yaml too) for
// tests/integration/test_deploy.py's cross-reference checks.
// Needs `npm ci` in this directory (scripts/setup.sh does it).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import yaml from "js-yaml";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const jsonMode = args[0] === "--json";
if (jsonMode) args.shift();
const dir = path.resolve(args[0] ?? path.join(here, "..", "k8s"));
if (args.length > 1 || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
  console.error("usage: node validate.mjs [--json] [DIR]  (a directory of Kubernetes manifests)");
  process.exit(2);
}
if (jsonMode) {
  const out = {};
  for (const f of fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort())
    out[f] = yaml.loadAll(fs.readFileSync(path.join(dir, f), "utf8")).filter((d) => d != null);
  console.log(JSON.stringify(out));
  process.exit(0);
}

let errors = 0;
const fail = (where, msg) => {
  errors++;
  console.log(`FAIL ${where}: ${msg}`);
};

// apiVersion "apps/v1" kind "StatefulSet" -> module "kubernetes-models/apps/v1/StatefulSet".
const modelPath = (doc) => `kubernetes-models/${doc.apiVersion}/${doc.kind}`;

const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
const docs = []; // {file, index, doc, where}
for (const f of files) {
  if (f === "kustomization.yaml" || f === "kustomization.yml") continue;
  let loaded;
  try {
    loaded = yaml.loadAll(fs.readFileSync(path.join(dir, f), "utf8"));
  } catch (e) {
    fail(f, `YAML: ${e.message}`);
    continue;
  }
  loaded.forEach((doc, index) => {
    if (doc === null || doc === undefined) return; // an empty document (e.g. after ---)
    const where = `${f}#${index} ${doc?.kind ?? "?"}/${doc?.metadata?.name ?? "?"}`;
    if (typeof doc !== "object" || Array.isArray(doc) || !doc.apiVersion || !doc.kind) {
      fail(where, "not a Kubernetes object (no apiVersion/kind)");
      return;
    }
    docs.push({ file: f, index, doc, where });
  });
}
if (docs.length === 0) fail(dir, "no manifests found");

// 1. Schema validation.
for (const d of docs) {
  let Model;
  try {
    const mod = await import(modelPath(d.doc));
    Model = mod[d.doc.kind];
  } catch (e) {
    fail(d.where, `unknown apiVersion/kind ${d.doc.apiVersion} ${d.doc.kind}`);
    d.skip = true;
    continue;
  }
  try {
    new Model(d.doc).validate();
  } catch (e) {
    fail(d.where, `schema: ${e.message}`);
  }
}

// 2. Strict fields: one virtual TypeScript module per document, checked in one program.
{
  const virt = new Map();
  docs.forEach((d, i) => {
    if (d.skip) return;
    const name = path.join(here, `__manifest_${i}.ts`);
    d.virt = name;
    virt.set(
      name,
      `import type { I${d.doc.kind} } from "${modelPath(d.doc)}";\n` +
        `export const m: I${d.doc.kind} = ${JSON.stringify(d.doc, null, 1)};\n`,
    );
  });
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2020,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (f) => virt.has(f) || fileExists.call(host, f);
  host.readFile = (f) => virt.get(f) ?? readFile.call(host, f);
  host.getSourceFile = (f, lang, ...rest) =>
    virt.has(f)
      ? ts.createSourceFile(f, virt.get(f), lang, true)
      : getSourceFile.call(host, f, lang, ...rest);
  const program = ts.createProgram([...virt.keys()], options, host);
  const byFile = new Map(docs.filter((d) => d.virt).map((d) => [d.virt, d]));
  for (const diag of ts.getPreEmitDiagnostics(program)) {
    const d = diag.file ? byFile.get(diag.file.fileName) : undefined;
    let msg = ts.flattenDiagnosticMessageText(diag.messageText, " ");
    // Name the offending field path: the JSON text around the error position.
    if (d && diag.start !== undefined) {
      const { line } = diag.file.getLineAndCharacterOfPosition(diag.start);
      msg += ` (at: ${diag.file.text.split("\n")[line].trim()})`;
    }
    fail(d ? d.where : diag.file?.fileName ?? "typescript", `field: ${msg}`);
  }
}

// 3. kustomization.yaml.
const kpath = path.join(dir, "kustomization.yaml");
if (fs.existsSync(kpath)) {
  let k;
  try {
    k = yaml.load(fs.readFileSync(kpath, "utf8"));
  } catch (e) {
    fail("kustomization.yaml", `YAML: ${e.message}`);
  }
  if (k) {
    if (k.apiVersion !== "kustomize.config.k8s.io/v1beta1" || k.kind !== "Kustomization")
      fail("kustomization.yaml", "want apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization");
    const known = new Set([
      "apiVersion", "kind", "resources", "secretGenerator", "configMapGenerator", "labels",
      "commonLabels", "commonAnnotations", "namespace", "namePrefix", "nameSuffix", "images",
      "patches", "components", "generatorOptions", "replicas",
    ]);
    for (const key of Object.keys(k))
      if (!known.has(key)) fail("kustomization.yaml", `unknown field ${key}`);
    const resources = k.resources ?? [];
    for (const r of resources)
      if (!fs.existsSync(path.join(dir, r))) fail("kustomization.yaml", `resource ${r} does not exist`);
    for (const f of files)
      if (!["kustomization.yaml", "secret.yaml"].includes(f) && !resources.includes(f))
        fail("kustomization.yaml", `${f} is not listed in resources`);
    // The generated Secrets must match the placeholders in secret.yaml (names, type, keys).
    const placeholders = docs.filter((d) => d.file === "secret.yaml" && d.doc.kind === "Secret");
    const gens = k.secretGenerator ?? [];
    for (const g of gens) {
      const p = placeholders.find((d) => d.doc.metadata.name === g.name);
      if (!p) {
        fail("kustomization.yaml", `secretGenerator ${g.name} has no placeholder in secret.yaml`);
        continue;
      }
      const want = Object.keys({ ...p.doc.data, ...p.doc.stringData }).sort();
      const got = (g.files ?? []).map((f) => (f.includes("=") ? f.split("=")[0] : path.basename(f))).sort();
      if (JSON.stringify(want) !== JSON.stringify(got))
        fail("kustomization.yaml", `secretGenerator ${g.name} keys ${got} != secret.yaml keys ${want}`);
      if ((g.type ?? "Opaque") !== (p.doc.type ?? "Opaque"))
        fail("kustomization.yaml", `secretGenerator ${g.name} type ${g.type} != ${p.doc.type}`);
    }
    for (const p of placeholders)
      if (!gens.some((g) => g.name === p.doc.metadata.name))
        fail("kustomization.yaml", `Secret ${p.doc.metadata.name} of secret.yaml is not generated`);
  }
}

for (const d of docs) if (!d.skip) console.log(`${errors ? "    " : "ok  "} ${d.where}`);
if (errors) {
  console.log(`${errors} error(s) in ${dir}`);
  process.exit(1);
}
console.log(`all ${docs.length} manifests in ${dir} valid (kubernetes-models schemas, strict fields)`);
