/* eslint-disable */
/**
 * Generated `api` utility.
 *
 * THIS CODE IS AUTOMATICALLY GENERATED.
 *
 * To regenerate, run `npx convex dev`.
 * @module
 */

import type * as actions from "../actions.js";
import type * as bulk from "../bulk.js";
import type * as counter from "../counter.js";
import type * as durability from "../durability.js";
import type * as env from "../env.js";
import type * as errors from "../errors.js";
import type * as flood from "../flood.js";
import type * as http from "../http.js";
import type * as items from "../items.js";
import type * as limits from "../limits.js";
import type * as notes from "../notes.js";
import type * as readLimits from "../readLimits.js";
import type * as repush from "../repush.js";
import type * as repushHelper from "../repushHelper.js";
import type * as resilience from "../resilience.js";
import type * as scheduler from "../scheduler.js";
import type * as things from "../things.js";
import type * as validators from "../validators.js";

import type {
  ApiFromModules,
  FilterApi,
  FunctionReference,
} from "convex/server";

declare const fullApi: ApiFromModules<{
  actions: typeof actions;
  bulk: typeof bulk;
  counter: typeof counter;
  durability: typeof durability;
  env: typeof env;
  errors: typeof errors;
  flood: typeof flood;
  http: typeof http;
  items: typeof items;
  limits: typeof limits;
  notes: typeof notes;
  readLimits: typeof readLimits;
  repush: typeof repush;
  repushHelper: typeof repushHelper;
  resilience: typeof resilience;
  scheduler: typeof scheduler;
  things: typeof things;
  validators: typeof validators;
}>;

/**
 * A utility for referencing Convex functions in your app's public API.
 *
 * Usage:
 * ```js
 * const myFunctionReference = api.myModule.myFunction;
 * ```
 */
export declare const api: FilterApi<
  typeof fullApi,
  FunctionReference<any, "public">
>;

/**
 * A utility for referencing Convex functions in your app's internal API.
 *
 * Usage:
 * ```js
 * const myFunctionReference = internal.myModule.myFunction;
 * ```
 */
export declare const internal: FilterApi<
  typeof fullApi,
  FunctionReference<any, "internal">
>;

export declare const components: {};
