// Builds the portal into OUT (argv[2], default dist/): app.js (bundled,
// minified), app.css and index.html, and prints the gzipped size of app.js.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || join(here, 'dist'));
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, 'src/app.js')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  legalComments: 'none',
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
});
copyFileSync(join(here, 'src/app.css'), join(out, 'app.css'));
copyFileSync(join(here, 'src/index.html'), join(out, 'index.html'));
const js = readFileSync(join(out, 'app.js'));
console.log(`app.js: ${js.length} bytes, ${gzipSync(js, { level: 9 }).length} bytes gzipped`);
