// The Node.js NATS client against broker's NATS listener, beside a native Python client
// (driven by tests/test_nats_node.py). Each step prints one JSON line the test reads.
"use strict";
const { connect, headers, StringCodec } = require("nats");

async function main(url) {
  const sc = StringCodec();
  const nc = await connect({ servers: url, name: "node" });
  const echo = nc.subscribe("node.echo");
  (async () => {
    for await (const m of echo) {
      m.respond(sc.encode("node says " + sc.decode(m.data)));
    }
  })();
  const inbox = nc.subscribe("node.in", { max: 1 });
  await nc.flush();
  console.log(JSON.stringify({ ready: true }));
  for await (const m of inbox) {
    const header = m.headers ? m.headers.get("K") : null;
    console.log(JSON.stringify({ got: sc.decode(m.data), reply: m.reply, header }));
  }
  const answer = await nc.request("py.svc", sc.encode("from node"), { timeout: 5000 });
  const h = headers();
  h.set("From", "node");
  nc.publish("py.in", sc.encode("hello python"), { headers: h });
  console.log(JSON.stringify({ answer: sc.decode(answer.data) }));
  await nc.drain();
}

main(process.argv[2]).catch((error) => {
  console.error(error);
  process.exit(1);
});
