#!/usr/bin/env node
'use strict';
// Calls GetModelInfo and Recommend and prints {"model_info": ..., "recommend": ...}
// as JSON (field names as in the .proto, enums by name, uint64 as strings), so the
// answer can be compared with the Python and Go clients'.
//
//   node recommend.js --address 127.0.0.1:50051 --user U --cart A,B --strategy up_sell --limit 5 [--explain]
//   node recommend.js --address 127.0.0.1:50051 --request '{"user_id": "U", "cart": [{"item_id": "A"}]}'
//
// Security, as `xsell recommend`: --tls-ca CA.pem (TLS; --tls alone: the system's roots),
// --tls-cert/--tls-key (mutual TLS), --tls-server-name NAME (the name in the server's
// certificate when it is not the address's host), --token (default $XSELL_TOKEN).
// Without a --tls* option the channel is plaintext.

const { parseArgs } = require('util');
const { createClient, call } = require('./client');

const STRATEGIES = { cross_sell: 'STRATEGY_CROSS_SELL', up_sell: 'STRATEGY_UP_SELL', both: 'STRATEGY_BOTH' };

// JSON has no NaN or Infinity (JSON.stringify writes null); the proto3 JSON mapping
// spells them as strings, as Go's protojson and Python's json_format do. The server
// sends NaN for a feature value it does not know.
function protoJsonNumbers(_key, value) {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    return Number.isNaN(value) ? 'NaN' : value > 0 ? 'Infinity' : '-Infinity';
  }
  return value;
}

function fail(message) {
  process.stderr.write(`xsell-node-client: ${message}\n`);
  process.exit(2);
}

function buildRequest(values) {
  if (values.request) {
    try {
      return JSON.parse(values.request);
    } catch (e) {
      fail(`--request: not JSON: ${e.message}`);
    }
  }
  const strategy = STRATEGIES[values.strategy];
  if (!strategy) fail(`--strategy: '${values.strategy}' is not one of ${Object.keys(STRATEGIES).join(', ')}`);
  const limit = Number(values.limit);
  if (!Number.isInteger(limit) || limit < 0) fail(`--limit: '${values.limit}' is not a whole number >= 0`);
  const cart = values.cart.split(',').map((s) => s.trim()).filter(Boolean).map((item_id) => ({ item_id, quantity: 1 }));
  return { user_id: values.user, cart, strategy, limit, explain: values.explain };
}

// The errors about TLS files name the flags, as the user typed them.
const TLS_FLAGS = { ca: '--tls-ca', cert: '--tls-cert', key: '--tls-key' };

// TLS is on with --tls or any of --tls-ca/--tls-cert/--tls-key (as in `xsell recommend`).
function tlsOptions(values) {
  const on = values.tls || ['tls-ca', 'tls-cert', 'tls-key'].some((k) => values[k] !== undefined);
  if (!on) {
    // a server name on a plaintext channel would be silently ignored
    if (values['tls-server-name'] !== undefined) fail('--tls-server-name needs TLS (--tls-ca, --tls-cert or --tls)');
    return undefined;
  }
  if ((values['tls-cert'] === undefined) !== (values['tls-key'] === undefined)) {
    fail('--tls-cert and --tls-key go together (mutual TLS needs both)');
  }
  return { ca: values['tls-ca'], cert: values['tls-cert'], key: values['tls-key'], serverName: values['tls-server-name'] };
}

// A refused TLS handshake often reaches the client only as "Failed to connect" (with
// TLS 1.3 the server checks the client's certificate after the client has finished).
function unavailableHint(values) {
  const tls = tlsOptions(values);
  if (!tls) return ' (plaintext channel: if the server uses TLS, give --tls-ca or --tls)';
  if (!tls.cert) return ' (if the server requires mutual TLS, give --tls-cert and --tls-key)';
  return '';
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        address: { type: 'string', default: '127.0.0.1:50051' },
        request: { type: 'string' },
        user: { type: 'string', default: '' },
        cart: { type: 'string', default: '' },
        strategy: { type: 'string', default: 'both' },
        limit: { type: 'string', default: '0' },
        explain: { type: 'boolean', default: false },
        token: { type: 'string', default: process.env.XSELL_TOKEN || '' },
        'timeout-ms': { type: 'string', default: '5000' },
        tls: { type: 'boolean', default: false },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'tls-server-name': { type: 'string' },
      },
    }));
  } catch (e) {
    fail(e.message);
  }
  const request = buildRequest(values);
  let client;
  try {
    // One connection: two calls from one short-lived process gain nothing from reaching
    // several workers, and both answers then come from the same worker (one handshake).
    client = createClient(values.address, {
      token: values.token,
      tls: tlsOptions(values),
      tlsNames: TLS_FLAGS,
      connections: 1,
    });
  } catch (e) {
    fail(e.message);
  }
  const timeoutMs = Number(values['timeout-ms']);
  try {
    const modelInfo = await call(client, 'GetModelInfo', {}, { timeoutMs });
    const recommend = await call(client, 'Recommend', request, { timeoutMs });
    process.stdout.write(`${JSON.stringify({ model_info: modelInfo, recommend }, protoJsonNumbers, 2)}\n`);
  } catch (e) {
    fail(e.codeName === 'UNAVAILABLE' ? `${e.message}${unavailableHint(values)}` : e.message);
  } finally {
    client.close();
  }
}

main();
