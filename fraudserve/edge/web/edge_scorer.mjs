// Browser scorer of an edge bundle: the same validation, encoding and combination as edge_scorer.py,
// with the member graphs run by onnxruntime-web. No build step: import it as an ES module.
//
//   import { loadBundle } from "./web/edge_scorer.mjs";
//   const bundle = await loadBundle(new URL("./", location.href));
//   await bundle.predictions([{ amount: 12.5, ... }]);  // -> [{fraud_probability, ...} or {index, error, field, message}]

export const FORMAT = "fraud-edge/1";
const EPS = 1e-6;
const CHUNK_ROWS = 1024;

export class BundleError extends Error {
  name = "BundleError";
}

export class InvalidRow extends Error {
  name = "InvalidRow";

  constructor(message, field) {
    super(message);
    this.field = field;
  }
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

// Fetches a bundle file and checks it against the manifest; like the Python scorer, a mismatch refuses the bundle.
async function fetchVerified(root, manifest, name) {
  const entry = manifest.files[name];
  if (!entry) throw new BundleError(`${name} is not covered by the manifest`);
  const response = await fetch(new URL(name, root));
  if (!response.ok) throw new BundleError(`${name} is listed in the manifest but missing (HTTP ${response.status})`);
  const bytes = await response.arrayBuffer();
  if (globalThis.crypto?.subtle && (await sha256Hex(bytes)) !== entry.sha256) {
    throw new BundleError(`${name} does not match its sha256 in the manifest; refusing to load`);
  }
  return bytes;
}

async function importOrt(root, manifest) {
  const base = new URL(manifest.web?.ort_url ?? "web/ort/", root);
  const ort = await import(new URL("ort.wasm.min.mjs", base).href);
  ort.env.wasm.wasmPaths = base.href;
  // Threads need a cross-origin-isolated page (COOP/COEP headers) that a plain static server does not give.
  ort.env.wasm.numThreads = 1;
  return ort;
}

const pyRepr = (value) => (typeof value === "string" ? `'${value}'` : String(value));
const pyFloat = (x) => (Number.isInteger(x) ? x.toFixed(1) : String(x));

function typeName(value) {
  if (Array.isArray(value)) return "list";
  return { string: "str", boolean: "bool", object: "dict" }[typeof value] ?? typeof value;
}

// One value -> its float code, or InvalidRow: the rules and messages of _encode_value in edge_scorer.py.
export function encodeValue(feature, value, field) {
  if (value === null || value === undefined) throw new InvalidRow("field is required", field);
  if (feature.kind === "category") {
    if (typeof value !== "string") throw new InvalidRow("must be a string category", field);
    const code = feature.categories.indexOf(value);
    if (code < 0) {
      const expected = `[${feature.categories.map(pyRepr).join(", ")}]`;
      throw new InvalidRow(`unknown category ${pyRepr(value)}; expected one of ${expected}`, field);
    }
    return code;
  }
  if (feature.kind === "bool") {
    if (typeof value === "boolean") return value ? 1 : 0;
    if (value === 0 || value === 1) return value;
    throw new InvalidRow("must be a boolean", field);
  }
  if (typeof value !== "number") throw new InvalidRow(`must be a number, got ${typeName(value)}`, field);
  if (!Number.isFinite(value)) throw new InvalidRow("must be a finite number", field);
  if (feature.kind === "int" && !Number.isInteger(value)) throw new InvalidRow("must be an integer", field);
  const lo = feature.minimum ?? null;
  const hi = feature.maximum ?? null;
  if ((lo !== null && value < lo) || (hi !== null && value > hi)) {
    const bound = (b) => (b === null ? "None" : pyFloat(b));
    throw new InvalidRow(`${pyFloat(value)} is out of range in [${bound(lo)}, ${bound(hi)}]`, field);
  }
  return value;
}

export class EdgeBundle {
  constructor(ort, manifest, schema, combiner, sessions) {
    this.ort = ort;
    this.manifest = manifest;
    this.features = schema.features;
    this.names = new Set(schema.features.map((f) => f.name));
    this.version = combiner.version;
    this.members = combiner.members;
    this.weights = combiner.weights;
    this.links = combiner.links;
    this.intercept = combiner.intercept;
    this.threshold = combiner.threshold;
    this.sessions = sessions;
    // Without crypto.subtle (a page on plain http from another host) the files cannot be hashed.
    this.verified = Boolean(globalThis.crypto?.subtle);
  }

  // One record -> a Float64Array row; InvalidRow names the first bad field ("amount", "colour", ...).
  encodeRecord(record) {
    if (record === null || typeof record !== "object" || Array.isArray(record)) {
      throw new InvalidRow("each transaction must be a JSON object", null);
    }
    const extra = Object.keys(record)
      .filter((k) => !this.names.has(k) && k !== "id")
      .sort();
    if (extra.length) throw new InvalidRow("unknown field", extra[0]);
    return Float64Array.from(this.features, (f) => encodeValue(f, record[f.name], f.name));
  }

  async memberScores(matrix, n) {
    const scores = {};
    for (const member of this.members) {
      const dtype = this.manifest.members[member].input_dtype;
      const data = dtype === "float64" ? matrix : Float32Array.from(matrix);
      const session = this.sessions[member];
      const feeds = { [session.inputNames[0]]: new this.ort.Tensor(dtype, data, [n, this.features.length]) };
      const output = (await session.run(feeds))[session.outputNames[0]];
      scores[member] = Array.from(output.data, Number);
    }
    return scores;
  }

  combine(scores, n) {
    const probabilities = new Array(n);
    for (let r = 0; r < n; r++) {
      let z = this.intercept;
      for (const [member, weight] of Object.entries(this.weights)) {
        let s = scores[member][r];
        if (this.links[member] === "logit") {
          const p = Math.min(Math.max(s, EPS), 1 - EPS);
          s = Math.log(p / (1 - p));
        }
        z += weight * s;
      }
      probabilities[r] = 1 / (1 + Math.exp(-z));
    }
    return probabilities;
  }

  // Records -> one result per record, in order: a prediction (the fields of REST /predict) or an error.
  async predictions(records) {
    const results = new Array(records.length);
    const valid = [];
    records.forEach((record, index) => {
      try {
        valid.push({ index, record, row: this.encodeRecord(record) });
      } catch (error) {
        if (!(error instanceof InvalidRow)) throw error;
        results[index] = { index, error: "invalid_input", field: error.field, message: error.message };
      }
    });
    for (let start = 0; start < valid.length; start += CHUNK_ROWS) {
      const chunk = valid.slice(start, start + CHUNK_ROWS);
      const matrix = new Float64Array(chunk.length * this.features.length);
      chunk.forEach(({ row }, i) => matrix.set(row, i * this.features.length));
      const scores = await this.memberScores(matrix, chunk.length);
      const probabilities = this.combine(scores, chunk.length);
      chunk.forEach(({ index, record }, i) => {
        const prediction = {
          fraud_probability: probabilities[i],
          is_fraud: probabilities[i] >= this.threshold,
          threshold: this.threshold,
          scores: Object.fromEntries(this.members.map((m) => [m, scores[m][i]])),
          model_version: this.version,
        };
        results[index] = record.id === undefined ? prediction : { id: record.id, ...prediction };
      });
    }
    return results;
  }
}

// The bundle at `root` (a URL of its folder): manifest, schema, combiner and members, each checked against its sha256.
export async function loadBundle(root) {
  const response = await fetch(new URL("manifest.json", root));
  if (!response.ok) throw new BundleError(`no manifest.json at ${root} (HTTP ${response.status}); not an edge bundle`);
  const manifest = await response.json();
  if (manifest.format !== FORMAT) throw new BundleError(`format ${manifest.format}, expected ${FORMAT}`);
  const text = async (name) => JSON.parse(new TextDecoder().decode(await fetchVerified(root, manifest, name)));
  const [schema, combiner, ort] = await Promise.all([
    text("schema.json"),
    text("combiner.json"),
    importOrt(root, manifest),
  ]);
  const sessions = {};
  for (const member of combiner.members) {
    const bytes = await fetchVerified(root, manifest, manifest.members[member].file);
    sessions[member] = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"] });
  }
  return new EdgeBundle(ort, manifest, schema, combiner, sessions);
}
