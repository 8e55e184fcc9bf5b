#!/usr/bin/env node
// Launcher for `npx sdlab`: registers tsx so the TypeScript sources run as-is (no build step).
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../src/cli.ts');
await main(process.argv);
