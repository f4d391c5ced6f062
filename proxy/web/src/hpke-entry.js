// The one entry point of vendor/hpke.js: the HPKE pieces the page uses, from the npm packages pinned in
// package-lock.json. Everything else in proxy/web is hand-written ES modules loaded as they are.
export { Aes128Gcm, Aes256Gcm, CipherSuite, DhkemP256HkdfSha256, HkdfSha256, HkdfSha384, HkdfSha512 } from "@hpke/core";
export { DhkemX25519HkdfSha256 } from "@hpke/dhkem-x25519";
export { Chacha20Poly1305 } from "@hpke/chacha20poly1305";
// X-Wing (KEM 0x647A: ML-KEM-768 + X25519, post-quantum), on the `mlkem` package (FIPS 203, same author).
export { XWing } from "@hpke/hybridkem-x-wing";
