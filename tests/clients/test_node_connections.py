"""The Node.js client (clients/node/client.js) rotates its calls over `connections`
connections, as the Python clients do (tests/clients/test_connections.py), so a Node
service reaches every worker of `xsell serve --workers 2` (the kernel gives each
connection, not each call, to one worker: SO_REUSEPORT). A real server subprocess;
which worker answered is read from its JSON access log (the answering worker's pid).
The Node script also counts its own TCP connections to the server (its socket fds
matched against /proc/net/tcp*), so "N connections" is checked, not inferred.

Needs node with `npm ci` done in clients/node: skipped with the reason otherwise,
failed instead when XSELL_REQUIRE_TOOLCHAINS=1 (CI), as test_cross_language.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import answered

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
CLIENT_JS = NODE_DIR / "client.js"
# 16 connections all given to one of 2 workers: odds 2 / 2**16
CONNECTIONS, CALLS = 16, 32
MAX_CONNECTIONS = 64

# argv: client.js, address, connections, calls, server port. Makes `calls` GetModelInfo
# calls one after another, then prints how many of this process's TCP sockets are
# connected to the server port (before closing the client).
ROTATE_JS = r"""
'use strict';
const fs = require('fs');
const [clientJs, address, connections, calls, port] = process.argv.slice(2);
const { createClient, call } = require(clientJs);

// ESTABLISHED TCP connections of this process to `port` (Linux /proc).
function connectionsTo(port) {
  const inodes = new Set();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let link;
    try { link = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch { continue; }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) inodes.add(m[1]);
  }
  let n = 0;
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    if (!fs.existsSync(table)) continue;
    for (const line of fs.readFileSync(table, 'utf8').trim().split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);  // sl local rem st ... inode (field 9)
      const remotePort = parseInt(f[2].split(':')[1], 16);
      if (f[3] === '01' && remotePort === Number(port) && inodes.has(f[9])) n += 1;
    }
  }
  return n;
}

(async () => {
  const client = createClient(address, { connections: Number(connections) });
  for (let i = 0; i < Number(calls); i += 1) {
    await call(client, 'GetModelInfo', {}, { timeoutMs: 10000 });
  }
  const tcp = connectionsTo(port);
  client.close();
  process.stdout.write(JSON.stringify({ connections: client.connections, tcp }));
})().catch((e) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
"""

# Values of `connections` that createClient must refuse, as JavaScript source, and how
# the error prints the value (util.inspect).
BAD = {
    "0": "0",
    "-1": "-1",
    "65": "65",
    "1.5": "1.5",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "'4'": "'4'",
    "true": "true",
    "null": "null",
    "[2]": "[ 2 ]",
}
GOOD = {"1": 1, "64": MAX_CONNECTIONS, "undefined": 4}  # undefined: the default

# argv: client.js, JSON {name: JavaScript source}. Prints, for each, what
# createClient(..., {connections}) did; then the rotation order and a closed client's call.
OPTIONS_JS = r"""
'use strict';
const [clientJs, casesJson] = process.argv.slice(2);
const { createClient, call, ClientConfigError } = require(clientJs);
const out = { cases: {} };
for (const [name, source] of Object.entries(JSON.parse(casesJson))) {
  const connections = eval(`(${source})`);
  try {
    // nothing listens on port 1: creating a client connects nowhere (lazy channels)
    const client = createClient('127.0.0.1:1', connections === undefined ? {} : { connections });
    out.cases[name] = { connections: client.connections };
    client.close();
  } catch (e) {
    out.cases[name] = { error: e.message, config: e instanceof ClientConfigError };
  }
}
const client = createClient('127.0.0.1:1', { connections: 3 });
out.order = Array.from({ length: 7 }, () => client.stubs.indexOf(client.next()));
client.close();
call(client, 'GetModelInfo', {}).then(
  () => { out.closed = 'resolved'; },
  (e) => { out.closed = e.message; },
).finally(() => process.stdout.write(JSON.stringify(out)));
"""


@pytest.fixture(scope="module")
def node(require_tool, missing_tool) -> str:
    path = require_tool("node", "the Node.js client needs node >= 18")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing_tool("clients/node has no node_modules: run `npm ci` there")
    return path


def run_node(node: str, script: Path, *args: str) -> dict:
    proc = subprocess.run(
        [node, str(script), *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{script.name} {' '.join(args)} failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="counts connections in /proc/net/tcp")
def test_node_calls_rotate_over_connections_and_reach_every_worker(
    node, serve_cli, bundle_dir, tmp_path
):
    script = tmp_path / "rotate.js"
    script.write_text(ROTATE_JS)
    proc = serve_cli(bundle_dir, "--workers", "2")
    address, port = f"127.0.0.1:{proc.port}", str(proc.port)

    def rotate(connections: int, calls: int) -> dict:
        return run_node(node, script, str(CLIENT_JS), address, str(connections), str(calls), port)

    assert rotate(1, CALLS) == {"connections": 1, "tcp": 1}
    one = answered(proc, 0, CALLS)
    assert len(one) == 1 and one <= set(proc.pids)  # one connection: one worker

    # round robin: 32 calls open all 16 connections (random picks would miss ~2 of them)
    assert rotate(CONNECTIONS, CALLS) == {"connections": CONNECTIONS, "tcp": CONNECTIONS}
    assert answered(proc, CALLS, CALLS) == set(proc.pids)

    # each connection is opened at its first call: 8 calls, 8 of the 16
    assert rotate(CONNECTIONS, 8) == {"connections": CONNECTIONS, "tcp": 8}
    assert len(answered(proc, 2 * CALLS, 8)) >= 1  # the 8 calls did reach the server


def test_bad_connections_are_refused_naming_the_option(node, tmp_path):
    script = tmp_path / "options.js"
    script.write_text(OPTIONS_JS)
    cases = {**{name: name for name in BAD}, **{name: name for name in GOOD}}
    out = run_node(node, script, str(CLIENT_JS), json.dumps(cases))
    for name, shown in BAD.items():
        expected = f"connections: must be a whole number from 1 to {MAX_CONNECTIONS}, got {shown}"
        assert out["cases"][name] == {"error": expected, "config": True}, name
    for name, connections in GOOD.items():
        assert out["cases"][name] == {"connections": connections}, name
    assert out["order"] == [0, 1, 2, 0, 1, 2, 0]
    assert out["closed"] == "GetModelInfo: the client is closed"
