// callauth from JavaScript (Node 18+ or a browser: global fetch): start a flash call, fall
// back to a voice call (resend), read the code from the sandbox, check it.
//   CALLAUTH_URL=http://127.0.0.1:8080 node examples/client.mjs
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
