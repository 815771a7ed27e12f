'use strict';
// The xsell RecommendService for Node.js, loaded at run time from the repository's
// protos/ (the same files every other client is generated from; nothing is copied).
//
//   const { createClient, call } = require('./client');
//   const client = createClient('127.0.0.1:50051');
//   const info = await call(client, 'GetModelInfo', {});
//
// Messages are plain objects with the .proto field names (keepCase), enums as their
// names, 64-bit integers as strings (exact), and every field present (defaults).

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILE = 'xsell/v1/xsell.proto';
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  arrays: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};
// The server's batch answers can pass gRPC's 4 MiB default (see server/README.md).
const CHANNEL_OPTIONS = { 'grpc.max_receive_message_length': 16 * 1024 * 1024 };

function loadService(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [protoRoot] });
  return grpc.loadPackageDefinition(definition).xsell.v1.RecommendService;
}

function createClient(address, { token } = {}) {
  const RecommendService = loadService();
  const client = new RecommendService(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  client.xsellToken = token || '';
  return client;
}

// Promise wrapper: resolves with the response, rejects with an Error carrying
// code (a grpc.status number), codeName, details and field (xsell-error-field).
function call(client, method, request, { timeoutMs = 5000 } = {}) {
  const metadata = new grpc.Metadata();
  if (client.xsellToken) metadata.set('authorization', `Bearer ${client.xsellToken}`);
  const deadline = new Date(Date.now() + timeoutMs);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, response) => {
      if (!err) return resolve(response);
      const field = err.metadata ? err.metadata.get('xsell-error-field')[0] : undefined;
      const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
      const error = new Error(`${method}: ${codeName}: ${err.details}${field ? ` (field ${field})` : ''}`);
      Object.assign(error, { code: err.code, codeName, details: err.details, field });
      reject(error);
    });
  });
}

module.exports = { createClient, call, loadService, PROTO_ROOT };
