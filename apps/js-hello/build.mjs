import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
const [src, witPath, out] = process.argv.slice(2);
const { component } = await componentize(await readFile(src, 'utf8'), { witPath, worldName: 'app' });
await writeFile(out, component);
