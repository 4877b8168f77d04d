// callauth from JavaScript (Node 18+ or a browser: global fetch): start a flash call, fall
// back to a voice call (resend), read the code from the sandbox, check it.
//   CALLAUTH_URL=http://127.0.0.1:8080 node examples/client.mjs
// `client.mjs inbound` runs the inbound-call flow instead: the user calls a number (nothing to
// type), the sandbox plays that call, and the status is polled until approved.
// CALLAUTH_API_KEY (default dev) and CALLAUTH_PHONE (default +7 903 567-51-24) are read too.
const URL = (process.env.CALLAUTH_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const KEY = process.env.CALLAUTH_API_KEY || "dev";
const PHONE = process.env.CALLAUTH_PHONE || "+7 903 567-51-24";

// A problem document (RFC 9457): `code` is stable, `detail` is for people.
class CallauthError extends Error {
  constructor(status, problem) {
    super(`${status} ${problem.code}: ${problem.detail}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const resp = await fetch(URL + path, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json();
  // 429 and 503 say when to come back: resp.headers.get("Retry-After") seconds.
  if (!resp.ok) throw new CallauthError(resp.status, data);
  return data;
}

// The latest call the sandbox "placed" for this verification (newest first).
async function sandboxCall(phone, id) {
  const { calls } = await api("GET", `/v1/sandbox/calls?phone=${encodeURIComponent(phone)}`);
  return calls.find((c) => c.verification_id === id);
}

async function inbound() {
  // 1. Start an inbound call: New-Tel waits for the user's call; there is no code.
  const v = await api("POST", "/v1/verifications", { phone: PHONE, channel: "inbound_call" });
  console.log(`started ${v.id}: inbound call, no code`);
  // Show the user the number (and the QR code at qr_code_uri, when not null) until call_before.
  const { call_to: callTo, call_before: callBefore } = v.inbound;
  console.log(`the user calls +${callTo} before ${callBefore}`);

  // 2. Sandbox only: play the user's call (in production the user dials; New-Tel calls back).
  await api("POST", "/v1/sandbox/inbound-calls", { phone: v.phone });
  console.log("sandbox: the call was played");

  // 3. Poll the status until it is no longer pending, or New-Tel stopped waiting (10 s grace).
  const giveUp = Date.parse(callBefore) + 10_000;
  let status;
  for (;;) {
    ({ status } = await api("GET", `/v1/verifications/${v.id}`));
    if (status !== "pending" || Date.now() > giveUp) break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (status !== "approved") {
    console.error("not approved:", status);
    process.exit(1);
  }
  console.log("approved");
  process.exit(0);
}

if (process.argv[2] === "inbound") await inbound();

// 1. Start: the service calls the phone.
const v = await api("POST", "/v1/verifications", { phone: PHONE, channel: "flash_call" });
console.log(`started ${v.id}: flash call, ${v.code_length} digits`);

// 2. The sandbox shows the call: a flash call's code is the caller's last digits.
let call = await sandboxCall(v.phone, v.id);
console.log(`flash call from +${call.caller}`);

// 3. No call arrived? Resend by voice (after the cooldown); the latest code counts.
await api("POST", `/v1/verifications/${v.id}/resend`, { channel: "voice_call" });
call = await sandboxCall(v.phone, v.id);
console.log(`voice call says: ${call.text}`);

// 4. Check the code the user typed.
const result = await api("POST", `/v1/verifications/${v.id}/check`, { code: call.code });
if (!result.valid) {
  console.error("not approved:", result);
  process.exit(1);
}
console.log("approved");
