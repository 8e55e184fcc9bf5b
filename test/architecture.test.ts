/**
 * The folders of src/ import only downward. The table below is the architecture: each folder and
 * the folders it may import from. Models know no trainer, pipelines no CLI, layers no model,
 * file formats no model. The test reads every import of every file in src/ (static, type-only
 * and dynamic `import()`) and fails on an import the table does not allow, naming the file, and
 * on any folder-level cycle (the table itself must be acyclic, so no cycle can be allowed).
 *
 *   npx vitest run test/architecture.test.ts
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../src');

/** Folder → the folders it may import (besides itself). Lowest layers first. */
const ALLOWED: Record<string, readonly string[]> = {
  util: [],
  // Fused tensor ops (tfjs-core style: kernel names + compositions), file formats, datasets and
  // captions, pictures, noise schedules: each stands on util alone (schedules also on io, whose
  // config.ts holds the one rule for config keys that scheduler configs follow too; datasets on
  // io's size-checked PNG reader).
  ops: ['util'],
  io: ['util'],
  data: ['io', 'util'],
  viz: ['util'],
  schedule: ['io', 'util'],
  // tfjs backends register kernels under the ops' kernel names.
  backend: ['ops', 'util'],
  // Layers: no model, no backend.
  nn: ['ops', 'io', 'util'],
  // The three models: layers and file formats only (no data, no pictures, no trainer).
  clip: ['nn', 'ops', 'io', 'util'],
  unet: ['nn', 'ops', 'io', 'util'],
  autoencoder: ['nn', 'ops', 'io', 'util'],
  // Evaluation: a digit classifier, FID, CLIP zero-shot, the models' FLOP counts; reads models, data, draws pictures.
  eval: ['clip', 'unet', 'autoencoder', 'nn', 'ops', 'io', 'data', 'viz', 'util'],
  // Pipelines and their loaders (diffusers folders, single-file checkpoints): no trainer, no CLI.
  sample: ['clip', 'unet', 'autoencoder', 'schedule', 'nn', 'ops', 'io', 'data', 'viz', 'util'],
  // Trainers.
  train: ['sample', 'eval', 'clip', 'unet', 'autoencoder', 'schedule', 'nn', 'ops', 'backend', 'io', 'data', 'viz', 'util'],
  // Graded course exercises: the reference implementations they grade against come from anywhere below.
  exercises: ['train', 'sample', 'eval', 'clip', 'unet', 'autoencoder', 'schedule', 'nn', 'ops', 'io', 'data', 'viz', 'util'],
  // The CLI: everything below it.
  commands: ['exercises', 'train', 'sample', 'eval', 'clip', 'unet', 'autoencoder', 'schedule', 'nn', 'ops', 'backend', 'io', 'data', 'viz', 'util'],
  // Files directly in src/: the CLI entry (cli.ts) and the public library API (index.ts).
  '.': ['commands', 'exercises', 'train', 'sample', 'eval', 'clip', 'unet', 'autoencoder', 'schedule', 'nn', 'ops', 'backend', 'io', 'data', 'viz', 'util'],
};

export interface Edge {
  from: string;
  to: string;
  file: string;
  spec: string;
}

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(ts|mts)$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** The top-level folder of src/ a file belongs to ('.' for files directly in src/). */
function folderOf(file: string): string {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length === 1 ? '.' : rel[0];
}

/** Relative import specifiers of a source text: `from '…'`, `import '…'`, `import('…')`, `export … from '…'`. */
export function importSpecifiers(text: string): string[] {
  const specs: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])(\.{1,2}\/[^'"]+)\1/g;
  for (const m of text.matchAll(re)) specs.push(m[2]);
  return specs;
}

/** Folder-level import edges of every file in `root`. */
function folderEdges(root: string): Edge[] {
  const edges: Edge[] = [];
  for (const file of sourceFiles(root)) {
    const from = folderOf(file);
    for (const spec of importSpecifiers(fs.readFileSync(file, 'utf8'))) {
      const target = path.resolve(path.dirname(file), spec);
      if (!target.startsWith(SRC + path.sep)) continue;
      const to = folderOf(target);
      if (to !== from) edges.push({ from, to, file: path.relative(SRC, file), spec });
    }
  }
  return edges;
}

/** Edges the table does not allow, one readable line each. */
export function forbiddenImports(edges: Edge[], allowed: Record<string, readonly string[]>): string[] {
  return edges
    .filter((e) => !(allowed[e.from] ?? []).includes(e.to))
    .map((e) => `src/${e.file} imports '${e.spec}': ${e.from} may not import ${e.to}` + (e.from in allowed ? '' : ` (${e.from} is not in the table)`));
}

/** A cycle in a directed graph given as node → successors, or null. */
export function findCycle(graph: Record<string, readonly string[]>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === 'done') return null;
    if (state.get(n) === 'open') return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, 'open');
    stack.push(n);
    for (const m of graph[n] ?? []) {
      const c = visit(m);
      if (c) return c;
    }
    stack.pop();
    state.set(n, 'done');
    return null;
  };
  for (const n of Object.keys(graph)) {
    const c = visit(n);
    if (c) return c;
  }
  return null;
}

function graphOf(edges: Edge[]): Record<string, string[]> {
  const g: Record<string, string[]> = {};
  for (const e of edges) (g[e.from] ??= []).includes(e.to) || g[e.from].push(e.to);
  return g;
}

describe('architecture: imports run downward', () => {
  it('the checker finds upward imports and cycles (on a made-up tree)', () => {
    const edges: Edge[] = [
      { from: 'nn', to: 'util', file: 'nn/a.ts', spec: '../util/x.ts' },
      { from: 'util', to: 'nn', file: 'util/b.ts', spec: '../nn/a.ts' },
    ];
    expect(forbiddenImports(edges, { nn: ['util'], util: [] })).toEqual(["src/util/b.ts imports '../nn/a.ts': util may not import nn"]);
    expect(findCycle(graphOf(edges))).toEqual(['nn', 'util', 'nn']);
    expect(findCycle({ a: ['b'], b: ['c'], c: [] })).toBeNull();
    expect(importSpecifiers(`import a from './a.ts';\nimport type { B } from "../b/b.ts";\nconst c = await import('../c/c.ts');\nexport { d } from './d.ts';\nimport 'node:fs';`))
      .toEqual(['./a.ts', '../b/b.ts', '../c/c.ts', './d.ts']);
  });

  it('the allowed table is acyclic and names only folders that exist', () => {
    expect(findCycle(ALLOWED as Record<string, string[]>)).toBeNull();
    const folders = fs.readdirSync(SRC, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    for (const f of folders) expect(Object.keys(ALLOWED), `src/${f} is not in the architecture table`).toContain(f);
  });

  it('every import in src/ is allowed by the table', () => {
    const edges = folderEdges(SRC);
    expect(edges.length).toBeGreaterThan(50); // the parser sees the imports at all
    expect(forbiddenImports(edges, ALLOWED)).toEqual([]);
  });

  it('no folder-level import cycle', () => {
    expect(findCycle(graphOf(folderEdges(SRC)))).toBeNull();
  });
});
