// The one entry point of vendor/privacypass.js: the Privacy Pass pieces the page uses (RFC 9578 token type 2,
// publicly verifiable blind RSA), from Cloudflare's packages pinned in package-lock.json (@cloudflare/blindrsa-ts is
// overridden to 0.4.4, the newest the registry mirror has; privacypass-ts 0.9.0 asks for 0.4.5).
export { TokenChallenge, Token, TOKEN_TYPES, publicVerif } from "@cloudflare/privacypass-ts";
