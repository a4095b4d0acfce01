// node incr.mjs FILE COUNT: COUNT locked increments of /n; prints "ok COUNT MS".
import { jsonStore } from "./common.mjs";
const [file, count] = [process.argv[2], Number(process.argv[3])];
const store = jsonStore({ filePath: file, lock: true });
const t0 = performance.now();
for (let i = 0; i < count; i++) {
  await store.updateOr({ n: 0 }, (d) => ({ ...d, n: (d.n ?? 0) + 1 }));
}
console.log(`ok ${count} ${Math.round(performance.now() - t0)}`);
