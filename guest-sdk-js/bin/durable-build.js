#!/usr/bin/env node
// durable-build: turn a workflow module (TypeScript or JavaScript) into a
// durable-host component.
//
// esbuild bundles the module, the SDK and whatever else it imports into one
// ES module (componentize-js takes a single file and no package imports),
// stripping TypeScript types on the way; componentize-js then builds the
// component against the contract's WIT, shipped in this package, so authors
// never handle WIT files.

import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const USAGE = `usage: durable-build WORKFLOW.(ts|js) [-o OUT.wasm] [--no-http]

Builds a workflow module into a durable-host component. The module's default
export is the workflow: export default async function onboard(ctx, input) { ... }

  -o, --out FILE   where to write the component (default: the module's name with .wasm)
  --no-http        leave fetch out (the component then imports no wasi:http)
  -h, --help       this help

Exit codes: 0 built, 1 the module or the build failed, 2 bad usage.`;

const sdk = dirname(dirname(fileURLToPath(import.meta.url)));

/** A failure to report as one line and a hint, with exit code `code`. */
class BuildFailure extends Error {
  constructor(message, hint, code = 1) {
    super(message);
    this.hint = hint;
    this.code = code;
  }
}

function fail(message, hint, code = 1) {
  throw new BuildFailure(message, hint, code);
}

try {
  await main();
} catch (error) {
  if (!(error instanceof BuildFailure)) {
    throw error;
  }
  console.error(`error: ${error.message}`);
  if (error.hint) {
    console.error(`  hint: ${error.hint}`);
  }
  process.exitCode = error.code;
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        out: { type: 'string', short: 'o' },
        'no-http': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    fail(error.message, 'see durable-build --help', 2);
  }
  if (parsed.values.help) {
    console.log(USAGE);
    return;
  }
  if (parsed.positionals.length !== 1) {
    fail('give exactly one workflow module', 'durable-build workflow.ts -o workflow.wasm', 2);
  }

  const entry = resolve(parsed.positionals[0]);
  const out = resolve(parsed.values.out ?? basename(entry).replace(/\.[cm]?[jt]sx?$/, '') + '.wasm');
  const found = await stat(entry).catch(() => undefined);
  if (!found?.isFile()) {
    fail(`${entry} ${found ? 'is not a file' : 'does not exist'}`, 'give the path of the workflow module');
  }

  const started = Date.now();
  const work = await mkdtemp(join(tmpdir(), 'durable-build-'));
  try {
    const bundle = join(work, 'workflow.js');
    const { build } = await import('esbuild');
    try {
      await build({
        stdin: {
          // The component's exports, from the author's default export. The SDK
          // is imported as the author's module imports it, so that both get
          // one instance of it (its branches, its current step).
          contents: [
            `import workflow from ${JSON.stringify(entry)};`,
            "import { __exports } from 'durable-sdk';",
            'const exported = __exports(workflow);',
            'export const run = exported.run;',
            'export const runBranch = exported.runBranch;',
          ].join('\n'),
          resolveDir: dirname(entry),
          sourcefile: 'durable-entry.js',
          loader: 'js',
        },
        bundle: true,
        format: 'esm',
        platform: 'neutral',
        target: 'es2022',
        mainFields: ['module', 'main'],
        // A module that does not import the SDK itself gets this one.
        nodePaths: [dirname(sdk)],
        // The contract and WASI are the component's imports, not modules.
        external: ['durable:*', 'wasi:*'],
        outfile: bundle,
        logLevel: 'silent',
      });
    } catch (error) {
      const first = error.errors?.[0];
      if (first?.location?.file === 'durable-entry.js' && first.text.includes('"default"')) {
        fail(
          `${entry} has no default export`,
          'export the workflow as its default: export default async function onboard(ctx, input) { ... }',
        );
      }
      const where = first?.location ? `${first.location.file}:${first.location.line}:${first.location.column}: ` : '';
      fail(
        `${where}${first?.text ?? error.message}`,
        'fix the module; it must be an ES module whose imports resolve from its directory',
      );
    }

    const wit = join(sdk, 'wit');
    if (!existsSync(join(wit, 'durable.wit'))) {
      fail(
        `the SDK has no contract WIT at ${wit}`,
        'install durable-sdk as a package (npm install --install-links PATH), which copies it in',
      );
    }
    const { componentize } = await import('@bytecodealliance/componentize-js');
    let component;
    try {
      ({ component } = await componentize({
        sourcePath: bundle,
        witPath: wit,
        worldName: 'workflow',
        disableFeatures: parsed.values['no-http'] ? ['http'] : [],
      }));
    } catch (error) {
      // componentize-js reports a failing top-level script with the engine's
      // whole output: keep the lines that say what went wrong.
      const lines = String(error.message ?? error)
        .split('\n')
        .filter((line) => line.trim() && !line.includes('wizer'));
      fail(lines.slice(0, 3).join('\n  '), 'the module threw while it was loaded, or the component could not be built');
    }
    try {
      await writeFile(out, component);
    } catch (error) {
      fail(`cannot write ${out}: ${error.message}`, 'give -o a path in a directory that exists');
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const megabytes = (component.byteLength / 1e6).toFixed(1);
    console.error(`durable-build: built ${out} (${megabytes} MB) in ${seconds} s`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
