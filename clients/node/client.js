'use strict';
// The xsell RecommendService for Node.js, loaded at run time from the repository's
// protos/ (the same files every other client is generated from; nothing is copied).
//
//   const { createClient, call } = require('./client');
//   const client = createClient('127.0.0.1:50051');   // { connections: 4 } by default
//   const info = await call(client, 'GetModelInfo', {});
//   client.close();
//   // TLS (server-authenticated), mutual TLS, a bearer token:
//   createClient('10.0.0.7:50051', {
//     tls: { ca: 'ca.pem', cert: 'client.pem', key: 'client.key', serverName: 'xsell.internal' },
//     token: process.env.XSELL_TOKEN,
//   });
//
// Messages are plain objects with the .proto field names (keepCase), enums as their
// names, 64-bit integers as strings (exact), and every field present (defaults).

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const util = require('util');
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
// `xsell serve --workers N` shares one port between N processes (SO_REUSEPORT): the
// kernel gives each *connection* to one worker, so one connection reaches one worker.
// Calls rotate over this many connections (each opened at its first call), as in the
// Python clients (DEFAULT_CONNECTIONS, MAX_CONNECTIONS in clients/client.py).
const DEFAULT_CONNECTIONS = 4;
const MAX_CONNECTIONS = 64;

function loadService(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [protoRoot] });
  return grpc.loadPackageDefinition(definition).xsell.v1.RecommendService;
}

class ClientConfigError extends Error {}

// The Python client's words (the C library's strerror; Go's are the same in lower case).
const READ_ERRORS = { ENOENT: 'No such file or directory', EACCES: 'Permission denied', EISDIR: 'Is a directory' };

// A PEM file read now, so a bad path fails before any call, naming the option and file.
function readPem(file, what) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    const reason = READ_ERRORS[e.code] || e.message;
    throw new ClientConfigError(`${what}: cannot read ${file}: ${reason}`);
  }
  // grpc-js would only fail at the handshake, with a message naming no file
  if (!data.includes('-----BEGIN ')) throw new ClientConfigError(`${what}: ${file} is not a PEM file`);
  return data;
}

// How errors name the `tls` options; a command line passes its own flag names
// (recommend.js: --tls-ca, --tls-cert, --tls-key) so that they name what the user typed.
const TLS_OPTION_NAMES = { ca: 'tls.ca', cert: 'tls.cert', key: 'tls.key' };

// Channel credentials and options for `tls` = {ca, cert, key, serverName} (file paths;
// ca absent = the system's roots); no `tls` = plaintext. Same meaning as the Python
// TlsOptions and the `xsell recommend --tls-*` flags. Every file is checked here, so a
// bad one fails before any call with the option's name (from `names`) and the path.
function channelSecurity(tls, names = TLS_OPTION_NAMES) {
  if (!tls) return { credentials: grpc.credentials.createInsecure(), options: {} };
  if (!tls.cert !== !tls.key) {
    throw new ClientConfigError(`${names.cert} and ${names.key} go together (mutual TLS needs both)`);
  }
  const ca = tls.ca ? readPem(tls.ca, names.ca) : null;
  if (ca) {
    // grpc-js takes a CA file without any certificate and fails only at the handshake
    try {
      new crypto.X509Certificate(ca); // parses the first certificate of the file
    } catch {
      throw new ClientConfigError(`${names.ca}: no certificate in ${tls.ca}`);
    }
  }
  const key = tls.key ? readPem(tls.key, names.key) : null;
  const cert = tls.cert ? readPem(tls.cert, names.cert) : null;
  let credentials;
  try {
    credentials = grpc.credentials.createSsl(ca, key, cert);
  } catch (e) {
    // OpenSSL's reason (a bad PEM body, a key that does not match the certificate) names no file
    const files = cert ? `${names.cert} ${tls.cert} / ${names.key} ${tls.key}` : `${names.ca} ${tls.ca}`;
    throw new ClientConfigError(`${files}: ${e.message}`);
  }
  // the name checked in the server's certificate (and sent as SNI) when it is not the
  // address's host, e.g. when dialling an IP
  const options = tls.serverName ? { 'grpc.ssl_target_name_override': tls.serverName } : {};
  return { credentials, options };
}

function checkConnections(connections) {
  if (!Number.isInteger(connections) || connections < 1 || connections > MAX_CONNECTIONS) {
    throw new ClientConfigError(
      `connections: must be a whole number from 1 to ${MAX_CONNECTIONS}, got ${util.inspect(connections)}`,
    );
  }
  return connections;
}

// One grpc-js client (one channel) per connection; `call` takes them in turn. Node runs
// the calls' JavaScript on one thread, so the turn counter needs no lock.
class XsellClient {
  constructor(stubs, token) {
    this.stubs = stubs;
    this.xsellToken = token;
    this.turn = 0;
    this.closed = false;
  }

  get connections() {
    return this.stubs.length;
  }

  // The channel for the next call (round robin).
  next() {
    const stub = this.stubs[this.turn];
    this.turn = (this.turn + 1) % this.stubs.length;
    return stub;
  }

  close() {
    this.closed = true;
    for (const stub of this.stubs) stub.close();
  }
}

// tlsNames: how errors name the `tls` options (default TLS_OPTION_NAMES).
// connections: calls rotate over this many connections (1..64, default 4), each opened
// at its first call, so they reach every worker of a multi-process server.
function createClient(address, { token, tls, tlsNames, connections = DEFAULT_CONNECTIONS } = {}) {
  checkConnections(connections);
  const RecommendService = loadService();
  const security = channelSecurity(tls, tlsNames);
  const options = { ...CHANNEL_OPTIONS, ...security.options };
  // grpc-js keeps one process-wide subchannel pool and gives channels with the same
  // target, options and credentials the same subchannel, i.e. one TCP connection
  // (subchannel-pool.js). A pool of its own per channel gives each its own connection.
  if (connections > 1) options['grpc.use_local_subchannel_pool'] = 1;
  const stubs = [];
  for (let i = 0; i < connections; i += 1) {
    stubs.push(new RecommendService(address, security.credentials, options));
  }
  return new XsellClient(stubs, token || '');
}

// Promise wrapper: resolves with the response, rejects with an Error carrying
// code (a grpc.status number), codeName, details and field (xsell-error-field).
// Each call goes over the client's next connection (no retries: a failed call rejects).
function call(client, method, request, { timeoutMs = 5000 } = {}) {
  if (client.closed) return Promise.reject(new ClientConfigError(`${method}: the client is closed`));
  const metadata = new grpc.Metadata();
  if (client.xsellToken) metadata.set('authorization', `Bearer ${client.xsellToken}`);
  const deadline = new Date(Date.now() + timeoutMs);
  const stub = client.next();
  return new Promise((resolve, reject) => {
    stub[method](request, metadata, { deadline }, (err, response) => {
      if (!err) return resolve(response);
      const field = err.metadata ? err.metadata.get('xsell-error-field')[0] : undefined;
      const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
      const error = new Error(`${method}: ${codeName}: ${err.details}${field ? ` (field ${field})` : ''}`);
      Object.assign(error, { code: err.code, codeName, details: err.details, field });
      reject(error);
    });
  });
}

module.exports = {
  createClient,
  call,
  loadService,
  channelSecurity,
  ClientConfigError,
  XsellClient,
  PROTO_ROOT,
  TLS_OPTION_NAMES,
  DEFAULT_CONNECTIONS,
  MAX_CONNECTIONS,
};
