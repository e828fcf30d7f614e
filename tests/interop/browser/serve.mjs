// A tiny static HTTP server for the cross-origin case of webrtc.test.mjs: serves the files of
// one directory on 127.0.0.1:PORT (run inside the test's network namespace).
// Usage: node serve.mjs DIR PORT
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

const [dir, port] = process.argv.slice(2);
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
createServer(async (req, res) => {
  const name = path.basename(new URL(req.url, 'http://x').pathname) || 'index.html';
  try {
    const body = await readFile(path.join(dir, name));
    res.writeHead(200, { 'content-type': types[path.extname(name)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end('not found\n');
  }
}).listen(Number(port), '127.0.0.1', () => console.error(`page server listening on 127.0.0.1:${port}`));
