/** The snapshotter's defaults that the command line needs before it loads the service (and gRPC). */

/** Where containerd's config points the proxy plugin by default. */
export const DEFAULT_SNAPSHOTTER_SOCKET = '/run/thinpool/snapshotter.sock';
