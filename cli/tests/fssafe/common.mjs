// Loads @openclaw/fs-safe from $LOCKSTORE_FSSAFE_DIR/node_modules (ESM ignores NODE_PATH).
import { pathToFileURL } from "node:url";
import path from "node:path";
const dir = process.env.LOCKSTORE_FSSAFE_DIR;
const base = path.join(dir, "node_modules/@openclaw/fs-safe/dist");
export const { jsonStore } = await import(pathToFileURL(path.join(base, "store.js")).href);
export const { withFileLock } = await import(pathToFileURL(path.join(base, "file-lock.js")).href);
