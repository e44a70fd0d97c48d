import { v } from "convex/values";
import { query } from "./_generated/server";
import { HELPER_VERSION } from "./repushHelper";

const VERSION = "v1";

/** Reports the version of this module and of the module it imports. */
export const version = query({
  args: {},
  returns: v.object({ version: v.string(), helper: v.string() }),
  handler: async () => {
    return { version: VERSION, helper: HELPER_VERSION };
  },
});

/** Present only in the first version; a re-push removes it. */
export const onlyInV1 = query({
  args: {},
  returns: v.string(),
  handler: async () => "v1 only",
});
