#!/usr/bin/env node
// npm's `prepare` step: copy the contract's WIT from the repository
// (guest-sdk/wit, its one source) into this package, which npm packs
// without following symlinks. An installed package already holds it.

import { copyFileSync, existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const sdk = dirname(dirname(fileURLToPath(import.meta.url)));
const source = join(sdk, '..', 'guest-sdk', 'wit');
if (existsSync(source)) {
  mkdirSync(join(sdk, 'wit'), { recursive: true });
  for (const file of readdirSync(source).filter((f) => f.endsWith('.wit'))) {
    copyFileSync(join(source, file), join(sdk, 'wit', file));
  }
}
