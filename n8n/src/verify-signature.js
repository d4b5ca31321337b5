// Verify that this call really comes from the AIO agent (scheme: aio_agent/signing.py).
// Fails closed: anything missing or wrong ends in a refusal the "Refuse" node sends back.
// DEPARTMENT and TOOL are set above this line by n8n/build_workflows.py.
const crypto = require('crypto');
const TOLERANCE_S = 300; // a timestamp more than 5 minutes away from our clock is refused
const SEEN_TTL_S = 600; // request ids are remembered 10 minutes (twice the tolerance)

const item = $input.first();
const headers = item.json.headers || {};
const refuse = (statusCode, error) => [{ json: { verified: false, statusCode, error } }];

// The signing secret: AIO_WEBHOOK_SECRET_<DEPARTMENT> (one per department) or AIO_WEBHOOK_SECRET.
let secret;
try {
  secret = $env[`AIO_WEBHOOK_SECRET_${DEPARTMENT.toUpperCase()}`] || $env.AIO_WEBHOOK_SECRET;
} catch (error) {
  return refuse(500, 'n8n may not read environment variables: set N8N_BLOCK_ENV_ACCESS_IN_NODE=false');
}
if (typeof secret !== 'string' || secret.length === 0) {
  return refuse(500, `n8n has no signing secret: set AIO_WEBHOOK_SECRET_${DEPARTMENT.toUpperCase()} or AIO_WEBHOOK_SECRET`);
}

const timestamp = String(headers['x-aio-timestamp'] || '');
if (!/^[0-9]{1,12}$/.test(timestamp)) {
  return refuse(401, 'missing or malformed X-AIO-Timestamp');
}
const now = Date.now() / 1000;
const age = now - Number(timestamp);
if (age > TOLERANCE_S) {
  return refuse(401, 'stale request: X-AIO-Timestamp is more than 5 minutes old');
}
if (age < -TOLERANCE_S) {
  return refuse(401, 'X-AIO-Timestamp is more than 5 minutes in the future');
}

if (!item.binary || !item.binary.data) {
  return refuse(400, 'empty request body');
}
const raw = await this.helpers.getBinaryDataBuffer(0, 'data');
const expected = Buffer.from(
  'sha256=' + crypto.createHmac('sha256', secret).update(`${timestamp}.`).update(raw).digest('hex'),
);
const given = Buffer.from(String(headers['x-signature'] || ''));
if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
  return refuse(401, 'bad or missing X-Signature');
}

// Only the signed bytes are trusted from here on.
let body;
try {
  body = JSON.parse(raw.toString('utf8'));
} catch (error) {
  return refuse(400, 'the body is not JSON');
}
if (body === null || typeof body !== 'object' || Array.isArray(body)) {
  return refuse(400, 'the body must be a JSON object');
}
const requestId = typeof body.request_id === 'string' ? body.request_id : '';
if (!/^[A-Za-z0-9-]{8,64}$/.test(requestId) || headers['x-aio-request-id'] !== requestId) {
  return refuse(401, 'X-AIO-Request-Id is missing or differs from the signed request_id');
}
if (body.department_id !== DEPARTMENT || body.tool !== TOOL) {
  return refuse(400, `this workflow serves ${DEPARTMENT}/${TOOL}, not ${body.department_id}/${body.tool}`);
}
const args = body.arguments;
if (args === null || typeof args !== 'object' || Array.isArray(args)) {
  return refuse(400, 'arguments must be a JSON object');
}

// Replay guard: a request id is accepted once. Ids older than SEEN_TTL_S are forgotten; by then
// their timestamp is refused anyway.
const staticData = $getWorkflowStaticData('global');
const seen = staticData.seenRequestIds || {};
for (const [id, at] of Object.entries(seen)) {
  if (now - at > SEEN_TTL_S) delete seen[id];
}
if (Object.prototype.hasOwnProperty.call(seen, requestId)) {
  return refuse(401, 'replayed request: this X-AIO-Request-Id was already used');
}
seen[requestId] = Math.floor(now);
staticData.seenRequestIds = seen;

return [
  {
    json: {
      verified: true,
      department_id: body.department_id,
      session_id: typeof body.session_id === 'string' ? body.session_id : '',
      tool: body.tool,
      request_id: requestId,
      arguments: args,
    },
  },
];
