// Socket.IO (Node.js) relay with rooms.
//
// Events (Socket.IO v5 over Engine.IO v4, default namespace):
//   "join"     room name              join the room; acknowledged with true when asked
//   "publish"  {room, body}           emit "message" body to every client in the room
//
// With --redis-url the server uses @socket.io/redis-adapter (node-redis clients), its
// production configuration for more than one process: a broadcast is delivered to this
// process's members at once and published on Redis for the other processes. Without it,
// the default in-memory adapter (one process).
//
//   node server.js --port 8000 [--redis-url redis://127.0.0.1:6379/0]
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function option(name) {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : undefined;
}

async function main() {
  const port = Number(option("--port"));
  const redisUrl = option("--redis-url");
  if (!port) throw new Error("--port is required");

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    cors: { origin: "*" },
  });

  if (redisUrl) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pubClient = createClient({ url: redisUrl });
    const subClient = pubClient.duplicate();
    for (const client of [pubClient, subClient]) {
      client.on("error", (error) => console.error("redis:", error.message));
    }
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }

  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack(true);
    });
    socket.on("publish", (data) => {
      io.to(data.room).emit("message", data.body);
    });
  });

  httpServer.listen(port, "127.0.0.1", 4096);
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
