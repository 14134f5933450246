// ESM entry: `import fyvault from "fyvault"` or `import { get } from "fyvault"`.
import fyvault from "./index.js";

export default fyvault;
export const { get, getBuffer, list, connect, events, watch, Client, FyvaultError, DEFAULT_SOCKET } =
  fyvault;
