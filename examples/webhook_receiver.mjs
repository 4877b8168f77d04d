// A receiver of callauth's webhooks in Node 20, with node:http and node:crypto only: it checks
// each delivery per the Standard Webhooks specification (HMAC-SHA256 of "id.timestamp.body"
// with the secret's bytes, one "v1,<base64>" entry per secret in webhook-signature, the
// timestamp within 5 minutes), prints the event and answers 204; one that does not verify
// gets 401. Run it where the client's webhook_url points:
//   CALLAUTH_WEBHOOK_SECRET=whsec_... PORT=8000 node examples/webhook_receiver.mjs
// It listens on HOST (default 127.0.0.1) and PORT (default 8000), any path.
// Delivery is at least once: an event may come more than once, always with the same
// webhook-id, so act on each id once (here a Set in memory; a real receiver keeps the ids in
// its database for as long as retries last: 3 days and some hours with the default waits).
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const key = Buffer.from(process.env.CALLAUTH_WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
const seen = new Set();

function verified(headers, body) {
  const id = headers["webhook-id"], ts = headers["webhook-timestamp"] ?? "";
  if (!id || !/^\d+$/.test(ts) || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const mac = createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest();
  return (headers["webhook-signature"] ?? "").split(" ").some((entry) => {
    const [version, sig] = entry.split(",", 2), given = Buffer.from(sig ?? "", "base64");
    return version === "v1" && given.length === mac.length && timingSafeEqual(given, mac);
  });
}

createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks); // the bytes as signed: verify before parsing
  if (!verified(req.headers, body)) return res.writeHead(401).end();
  if (!seen.has(req.headers["webhook-id"])) {
    seen.add(req.headers["webhook-id"]);
    const event = JSON.parse(body);
    console.log(event.type, event.data.id, event.data.status);
  }
  res.writeHead(204).end(); // any 2xx delivers; 410 drops the event; else a retry
}).listen(Number(process.env.PORT || 8000), process.env.HOST || "127.0.0.1", function () {
  console.log(`listening on ${this.address().address}:${this.address().port}`);
});
