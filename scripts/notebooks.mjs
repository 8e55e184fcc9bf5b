#!/usr/bin/env node
/**
 * The course notebooks (notebooks/*.ipynb, TypeScript on the tslab kernel).
 *
 *   npm run notebooks                       set up once (kernel, `sdlab` link), then open Jupyter on notebooks/
 *   npm run notebooks:run                   execute every notebook headlessly, in place (0 → 6, then the
 *                                           exercises), refreshing the committed outputs; fails on a cell error
 *   npm run notebooks:run -- exercises      only the notebooks whose path contains "exercises" (or 03_, …)
 *   npm run notebooks:setup                 only the set-up (e.g. before opening the folder in VS Code)
 *
 * Options of `run`: --cell-timeout S (default 300: a cell running longer fails), --budget S (default
 * 180: a notebook taking longer is reported, and fails the run with --strict), --allow-errors (keep
 * going and save the error in the notebook instead of failing).
 *
 * Set-up: the notebooks import 'sdlab'. tslab type-checks every cell with the Node-10 module
 * resolution, which finds packages only in node_modules/, so a link node_modules/sdlab → ..
 * (the repository itself) is made, and dist/ is built if missing. The tslab kernel is installed
 * into the Jupyter of `jupyter` on the PATH (Debian: jupyter-notebook, jupyter-nbconvert,
 * python3-ipykernel), for this user, with the absolute path of node_modules/.bin/tslab, so Jupyter
 * and VS Code start it without npx.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const nbDir = path.join(root, 'notebooks');

function fail(message) {
  console.error(`notebooks: ${message}`);
  process.exit(1);
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** The Python that runs `jupyter` (its shebang), so the kernel lands in the Jupyter that will use it. */
function jupyterPython(jupyter) {
  try {
    const first = fs.readFileSync(fs.realpathSync(jupyter), 'utf8').split('\n', 1)[0];
    const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(first);
    if (m) return m[1].endsWith('/env') && m[2] ? m[2] : m[1];
  } catch {
    // not a script: fall through
  }
  return 'python3';
}

function setup() {
  if (!fs.existsSync(path.join(root, 'dist', 'index.js'))) {
    console.log('notebooks: building dist/ (npm run build) …');
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' });
  }
  const link = path.join(root, 'node_modules', 'sdlab');
  let linked = false;
  try {
    linked = fs.realpathSync(link) === fs.realpathSync(root);
  } catch {
    // missing
  }
  if (!linked) {
    fs.rmSync(link, { recursive: true, force: true });
    fs.symlinkSync('..', link, 'dir');
    console.log('notebooks: linked node_modules/sdlab → the repository (so tslab finds sdlab\'s types)');
  }
  const jupyter = which('jupyter');
  if (!jupyter) {
    fail('`jupyter` is not on the PATH. Install it once, e.g. on Debian/Ubuntu:\n' +
      '  sudo apt-get install jupyter-notebook jupyter-nbconvert python3-ipykernel\n' +
      'or with pip: pip install notebook nbconvert ipykernel');
  }
  const tslab = path.join(root, 'node_modules', '.bin', 'tslab');
  if (!fs.existsSync(tslab)) fail('node_modules/.bin/tslab is missing: run `npm ci` (tslab is a devDependency).');
  const python = jupyterPython(jupyter);
  const r = spawnSync(tslab, ['install', `--python=${python}`, `--binary=${tslab}`, '--user'], { encoding: 'utf8' });
  if (r.status !== 0) fail(`tslab install failed:\n${r.stdout}${r.stderr}`);
  console.log(`notebooks: tslab kernel ("TypeScript", kernel name tslab) installed for ${python} → ${tslab}`);
  return jupyter;
}

function notebooks(filters) {
  const top = fs.readdirSync(nbDir).filter((f) => f.endsWith('.ipynb')).sort().map((f) => path.join('notebooks', f));
  const exDir = path.join(nbDir, 'exercises');
  const ex = fs.existsSync(exDir) ? fs.readdirSync(exDir).filter((f) => f.endsWith('.ipynb')).sort().map((f) => path.join('notebooks', 'exercises', f)) : [];
  const all = [...top, ...ex];
  return filters.length ? all.filter((f) => filters.some((s) => f.includes(s))) : all;
}

function run(args) {
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    if (i < 0) return dflt;
    const v = Number(args[i + 1]);
    args.splice(i, 2);
    if (!(v > 0)) fail(`${name}: expected a number of seconds.`);
    return v;
  };
  const flag = (name) => {
    const i = args.indexOf(name);
    if (i >= 0) args.splice(i, 1);
    return i >= 0;
  };
  const cellTimeout = opt('--cell-timeout', 300);
  const budget = opt('--budget', 180);
  const allowErrors = flag('--allow-errors');
  const strict = flag('--strict');
  const jupyter = setup();
  const files = notebooks(args);
  if (files.length === 0) fail(`no notebook matches ${args.join(' ')}`);
  const rows = [];
  let failed = null;
  for (const file of files) {
    const t0 = Date.now();
    console.log(`\n== ${file}`);
    const r = spawnSync(jupyter, [
      'nbconvert', '--to', 'notebook', '--execute', '--inplace',
      `--ExecutePreprocessor.timeout=${cellTimeout}`, '--ExecutePreprocessor.kernel_name=tslab',
      ...(allowErrors ? ['--allow-errors'] : []), file,
    ], { cwd: root, stdio: 'inherit' });
    const seconds = (Date.now() - t0) / 1000;
    const mb = fs.statSync(path.join(root, file)).size / 1e6;
    rows.push({ file, seconds, mb, ok: r.status === 0 });
    console.log(`== ${file}: ${r.status === 0 ? 'ok' : 'FAILED'} in ${seconds.toFixed(0)} s, ${mb.toFixed(2)} MB`);
    if (r.status !== 0) {
      failed = file;
      break;
    }
  }
  const total = rows.reduce((a, r) => a + r.seconds, 0);
  console.log('\nnotebook                                        time     size');
  for (const r of rows) {
    const warn = [r.seconds > budget ? `over ${budget} s` : '', r.mb > 2 ? 'over 2 MB' : ''].filter(Boolean).join(', ');
    console.log(`${r.file.padEnd(46)} ${`${r.seconds.toFixed(0)} s`.padStart(6)} ${`${r.mb.toFixed(2)} MB`.padStart(8)}${r.ok ? '' : '  FAILED'}${warn ? `  (${warn})` : ''}`);
  }
  console.log(`${'total'.padEnd(46)} ${`${total.toFixed(0)} s`.padStart(6)}`);
  if (failed) fail(`${failed}: a cell failed (its error is above).`);
  if (rows.some((r) => r.mb > 2)) fail('a notebook is over 2 MB with its outputs.');
  if (strict && rows.some((r) => r.seconds > budget)) fail(`a notebook took over ${budget} s.`);
}

const [cmd = 'open', ...rest] = process.argv.slice(2);
if (cmd === 'setup') {
  setup();
} else if (cmd === 'run') {
  run(rest);
} else if (cmd === 'open') {
  const jupyter = setup();
  console.log('notebooks: opening Jupyter on notebooks/ (Ctrl-C to stop)');
  const child = spawn(jupyter, ['notebook', ...rest, nbDir], { cwd: root, stdio: 'inherit' });
  child.on('exit', (code) => process.exit(code ?? 0));
  process.on('SIGINT', () => child.kill('SIGINT'));
} else {
  fail(`unknown command "${cmd}": expected open (default), run [filter…] or setup.`);
}
