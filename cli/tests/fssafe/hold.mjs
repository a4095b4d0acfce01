// node hold.mjs FILE: takes the store's lock, prints HELD, then waits forever.
import { jsonStore } from "./common.mjs";
const store = jsonStore({ filePath: process.argv[2], lock: true });
await store.updateOr({ n: 0 }, async (d) => {
  console.log("HELD");
  await new Promise(() => setInterval(() => {}, 1 << 30));
  return d;
});
