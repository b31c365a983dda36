// Prints an access token for the proxy at argv[2], obtained through the real flow
// (registration, PKCE, login, consent, token) with the e2e harness's browser.
import { Browser } from '../tests/e2e/harness.mjs';
import { signIn } from './sign-in.mjs';

process.stdout.write(await signIn(process.argv[2], new Browser(), process.argv[3]));
