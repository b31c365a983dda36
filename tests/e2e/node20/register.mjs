// node --import ./node20/register.mjs …: installs hooks.mjs on Node < 22.
import { register } from 'node:module';

if (Number(process.versions.node.split('.')[0]) < 22) {
  register('./hooks.mjs', import.meta.url);
}
