// Imported by repush.ts: after a re-push, both must come from the same version.
export const HELPER_VERSION = "v1";
