// An echo backend for the differential request-smuggling test
// (tests/tests/smuggling.rs), on Node's built-in `http` module and its llhttp parser.
//
// The protocol is the one echo.py describes: a request to a path starting with
// `/echo`, any method, is answered 200 with {seq, method, target, body_len, body}
// once its whole body has been read (`seq` counts completed requests, `body` is the
// first 200 bytes as latin-1); `GET /heartbeat` is 200 with no body and not counted;
// anything else is 404. Prints `listening on http://127.0.0.1:PORT` once it accepts
// connections.
'use strict';

const http = require('node:http');

// Longer than the balancer keeps an idle upstream connection, so Node is not the one
// that closes a connection the balancer is about to reuse.
const KEEP_ALIVE_MS = 75_000;

let seq = 0;

function reply(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/echo')) {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    // 'end' comes only once the whole body is in: a request cut short by a closed
    // connection is never counted.
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seq += 1;
      reply(
        res,
        200,
        JSON.stringify({
          seq,
          method: req.method,
          target: req.url,
          body_len: body.length,
          body: body.subarray(0, 200).toString('latin1'),
        }),
      );
    });
  } else if (req.method === 'GET' && req.url === '/heartbeat') {
    reply(res, 200, '');
  } else {
    reply(res, 404, 'not found');
  }
});
server.keepAliveTimeout = KEEP_ALIVE_MS;
server.headersTimeout = KEEP_ALIVE_MS + 1_000;

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`);
});

process.on('SIGTERM', () => process.exit(0));
