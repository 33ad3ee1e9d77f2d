// Secure aggregation's cryptography, with WebCrypto: the browser's half of
// webfl.core.secagg.runtime (the native half is cryptography's). Python asks for a
// batch of one operation (BrowserSession.crypto_request) and gets the answers back
// (crypto_answer); every key derivation, share and check stays in Python.
//
//   generate: {}                      -> X25519 private || public (64 bytes)
//   agree:    [private, peer public]   -> the 32-byte X25519 shared secret ("" if refused)
//   seal:     [key, aad, plaintext]    -> 12-byte nonce || AES-256-GCM ciphertext and tag
//   open:     [key, aad, sealed]       -> plaintext ("" if it does not authenticate)
//
// Bytes cross as hex strings: a few kilobytes a round, and no proxies to free.

const X25519 = { name: "X25519" };
// PKCS#8 of an X25519 private key is this 16-byte prefix, then the raw 32 bytes.
const PKCS8_PREFIX = fromHex("302e020100300506032b656e04220420");
const NONCE_BYTES = 12;

function fromHex(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

function toHex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function generate() {
  const pair = await crypto.subtle.generateKey(X25519, true, ["deriveBits"]);
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return toHex(concat(pkcs8.slice(-32), raw));
}

async function agree(privateHex, publicHex) {
  try {
    const own = await crypto.subtle.importKey("pkcs8", concat(PKCS8_PREFIX, fromHex(privateHex)), X25519, false, ["deriveBits"]);
    const peer = await crypto.subtle.importKey("raw", fromHex(publicHex), X25519, false, []);
    return toHex(await crypto.subtle.deriveBits({ name: "X25519", public: peer }, own, 256));
  } catch {
    return ""; // a low-order or malformed peer key: Python refuses the missing secret
  }
}

const aesKey = (hex, use) => crypto.subtle.importKey("raw", fromHex(hex), "AES-GCM", false, [use]);

async function seal(keyHex, aadHex, plaintextHex) {
  const iv = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const key = await aesKey(keyHex, "encrypt");
  const sealed = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: fromHex(aadHex) }, key, fromHex(plaintextHex));
  return toHex(concat(iv, new Uint8Array(sealed)));
}

async function open(keyHex, aadHex, sealedHex) {
  const sealed = fromHex(sealedHex);
  try {
    const key = await aesKey(keyHex, "decrypt");
    const iv = sealed.slice(0, NONCE_BYTES);
    return toHex(await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: fromHex(aadHex) }, key, sealed.slice(NONCE_BYTES)));
  } catch {
    return ""; // forged, re-routed or corrupted: Python refuses it
  }
}

const OPS = { generate, agree, seal, open };

// Answer every request a SecAgg stage makes, in turn; returns the frames Python produced.
export async function answerCrypto(session, bytesOut) {
  const frames = [];
  for (let request = session.crypto_request(); request; request = session.crypto_request()) {
    const { op, items } = JSON.parse(request);
    const answers = await Promise.all(items.map((item) => OPS[op](...item)));
    frames.push(...bytesOut(session.crypto_answer(answers)));
  }
  return frames;
}
