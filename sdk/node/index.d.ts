// Types of the `fyvault` package (CommonJS and ESM entries export the same things).

/** Stable error codes. */
export type FyvaultErrorCode =
  | "not_found"
  | "denied"
  | "no_previous"
  | "agent_unavailable"
  | "bad_response"
  | "invalid_name"
  /** A user-vault secret read for a user who has not connected a value (see `connect`). */
  | "user_secret_missing"
  /** A user-vault secret read without `{ user }`. */
  | "user_required"
  | "invalid_user"
  /** `connect` for a secret whose one value is shared (creator vault). */
  | "not_user_vault"
  /** `connect` while the agent cannot reach the vault. */
  | "vault_unreachable";

/** Every failure of the SDK. The message never holds a secret's value. */
export declare class FyvaultError extends Error {
  readonly name: "FyvaultError";
  readonly code: FyvaultErrorCode;
  /** The agent's HTTP status, when it answered. */
  readonly status?: number;
  /** The socket that was asked. */
  readonly socket?: string;
  /** `user_secret_missing`: true — show the user a "Connect your API key" step. */
  readonly connect: boolean;
}

export interface GetOptions {
  /** The previous version, readable during its grace period after a rotation. */
  previous?: boolean;
  /** For a user-vault secret: whose value (an app-defined user id). */
  user?: string;
}

export interface ConnectLink {
  /** Where the user pastes their key (single use). */
  url: string;
  /** RFC 3339; one hour after it was made. */
  expiresAt: string;
}

export interface SecretInfo {
  name: string;
  version: number;
  /** RFC 3339 time of the current version. */
  updatedAt: string;
  /** Set while the previous version is readable (`{ previous: true }`). */
  previousVersion?: number;
}

export type SecretEvent =
  | {
      type: "added" | "revoked" | "expired";
      name: string;
      version: number;
    }
  | {
      type: "rotated" | "updated";
      name: string;
      version: number;
      previousVersion: number;
    }
  | {
      /** Events may have been missed (the stream fell behind or reconnected): list again. */
      type: "resync";
      missed: number | null;
    };

export interface EventsOptions {
  /** Ends the iteration (and the connection) when aborted. */
  signal?: AbortSignal;
}

export interface Watcher {
  /** Stops watching and closes the connection. */
  close(): void;
  /** Settles once the watch has ended. */
  closed: Promise<void>;
}

export interface ClientOptions {
  /** The agent's socket; default `FYVAULT_SOCKET` or `/run/fyvault.sock`. */
  socket?: string;
}

export declare class Client {
  constructor(options?: ClientOptions);
  readonly socket: string;
  /** The value as a string (UTF-8). Asks the agent every time (no cache). */
  get(name: string, options?: GetOptions): Promise<string>;
  /** The value's exact bytes. */
  getBuffer(name: string, options?: GetOptions): Promise<Buffer>;
  /** The secrets this process may read; no values. */
  list(): Promise<SecretInfo[]>;
  /** A single-use link (1 hour) for `user` to supply their own value of `name`. */
  connect(name: string, user: string): Promise<ConnectLink>;
  /** The agent's events; reconnects by itself (then yields a `resync`). */
  events(options?: EventsOptions): AsyncGenerator<SecretEvent, void, undefined>;
  /** Calls `callback` for every event until `close()`. */
  watch(callback: (event: SecretEvent) => void | Promise<void>, options?: EventsOptions): Watcher;
  /** Closes idle keep-alive connections. */
  close(): void;
}

export declare const DEFAULT_SOCKET: "/run/fyvault.sock";
export declare function get(name: string, options?: GetOptions): Promise<string>;
export declare function getBuffer(name: string, options?: GetOptions): Promise<Buffer>;
export declare function list(): Promise<SecretInfo[]>;
export declare function connect(name: string, user: string): Promise<ConnectLink>;
export declare function events(options?: EventsOptions): AsyncGenerator<SecretEvent, void, undefined>;
export declare function watch(
  callback: (event: SecretEvent) => void | Promise<void>,
  options?: EventsOptions,
): Watcher;

declare const fyvault: {
  get: typeof get;
  getBuffer: typeof getBuffer;
  list: typeof list;
  connect: typeof connect;
  events: typeof events;
  watch: typeof watch;
  Client: typeof Client;
  FyvaultError: typeof FyvaultError;
  DEFAULT_SOCKET: typeof DEFAULT_SOCKET;
};
export default fyvault;
