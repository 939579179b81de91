// Validates Kubernetes objects offline against the Kubernetes OpenAPI
// schemas as compiled by kubernetes-models: reads a JSON array of objects on
// stdin, prints {"validated": N, "problems": ["Kind/name: ..."]} and exits 1
// when there is a problem. The schemas leave unknown fields alone, so each
// field name is also probed: an unknown field (a typo such as
// `runAsNonRot`) still validates when its value is replaced by one no schema
// type accepts, a known one does not.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];

// "apps/v1" -> kubernetes-models/apps/v1/<Kind>; "v1" -> kubernetes-models/v1/<Kind>
async function modelOf(obj) {
  const path = `kubernetes-models/${obj.apiVersion}/${obj.kind}`;
  try {
    return (await import(path))[obj.kind];
  } catch (e) {
    return null;
  }
}

function errorsOf(Model, obj) {
  try {
    new Model(obj).validate();
    return null;
  } catch (e) {
    return e.message;
  }
}

// Every path to an object key in OBJ, as arrays of keys and indexes.
function keyPaths(value, at = []) {
  if (Array.isArray(value))
    return value.flatMap((v, i) => keyPaths(v, [...at, i]));
  if (value && typeof value === "object")
    return Object.entries(value).flatMap(([k, v]) => [[...at, k], ...keyPaths(v, [...at, k])]);
  return [];
}

function withValue(obj, path, value) {
  const copy = structuredClone(obj);
  let node = copy;
  for (const k of path.slice(0, -1))
    node = node[k];
  node[path[path.length - 1]] = value;
  return copy;
}

for (const obj of objects) {
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = await modelOf(obj);
  if (!Model) {
    problems.push(`${name}: no schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    continue;
  }
  const err = errorsOf(Model, obj);
  if (err) {
    problems.push(`${name}: ${err}`);
    continue;
  }
  for (const path of keyPaths(obj)) {
    // a function is no JSON type: a field the schema knows refuses it (so does
    // a map of strings such as labels, whatever its keys)
    if (!errorsOf(Model, withValue(obj, path, () => 0)))
      problems.push(`${name}: unknown field ${path.join(".")}`);
  }
}
console.log(JSON.stringify({ validated: objects.length, problems }));
process.exit(problems.length ? 1 : 0);
