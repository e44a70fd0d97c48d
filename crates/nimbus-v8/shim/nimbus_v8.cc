// The C ABI nimbus-v8 uses to run JavaScript in V8 (Debian's libnode).
//
// Why a hand-written shim rather than bindings generated from the headers: V8's API is C++
// (templates, handles, scopes, virtual classes), which bindgen cannot call, and the part
// Nimbus needs is small: isolates with heap and ArrayBuffer limits, one context each, natives
// that take and return strings, classic scripts, ES modules over a loader callback, calling a
// global function, draining microtasks, and terminating a call. Everything here is in the API
// of both V8 10.2 (Debian 12's libnode108) and 11.3 (Debian 13's libnode115).
//
// Threading: an isolate is used by one thread at a time (the JS worker that owns it); the only
// call made from another thread is nv8_terminate, which V8 allows from any thread.

#include <libplatform/libplatform.h>
#include <v8.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" {

// Borrowed UTF-8 text or bytes.
struct nv8_str {
  const char* ptr;
  size_t len;
};

enum nv8_tag : uint32_t {
  NV8_UNDEFINED = 0,
  NV8_BOOL = 1,
  NV8_NUMBER = 2,
  NV8_STRING = 3,
  NV8_BYTES = 4,  // an ArrayBuffer (into JS) / an ArrayBuffer or view (out of JS)
};

// One argument of a call, either way.
struct nv8_arg {
  uint32_t tag;
  double number;  // NV8_BOOL (0 or 1), NV8_NUMBER
  const char* ptr;  // NV8_STRING, NV8_BYTES
  size_t len;
};

// Outcome of an entry into JavaScript.
enum nv8_status : int {
  NV8_OK = 0,
  NV8_EXCEPTION = 1,      // a JS exception escaped; the message is in the out text
  NV8_TERMINATED = 2,     // nv8_terminate stopped it (the CPU limit)
  NV8_OUT_OF_MEMORY = 3,  // the heap limit was reached; the isolate must be dropped
  NV8_ERROR = 4,          // the shim's own failure (message in the out text)
};

// A native function: `id` says which. Returns 0 with the result text in *out, or 1 with an
// error message in *out (thrown as an Error). *out must stay valid until the next callback.
typedef int (*nv8_native_fn)(void* host, uint32_t id, const nv8_arg* args, size_t nargs,
                             nv8_str* out);
// The module loader: resolves `specifier` imported by `referrer` into a module name, its
// source and (optionally, else empty) a code cache made by nv8_code_cache for that source.
// Returns 0, or 1 with an error message in *name. All stay valid until the next call.
typedef int (*nv8_load_fn)(void* host, nv8_str referrer, nv8_str specifier, nv8_str* name,
                           nv8_str* source, nv8_str* cache);

}  // extern "C"

namespace {

std::unique_ptr<v8::Platform> g_platform;
std::once_flag g_init_once;

// Counts ArrayBuffer memory against a limit; past it, allocation fails (V8 throws a
// RangeError) and the isolate records that its memory ran out.
class CountingAllocator final : public v8::ArrayBuffer::Allocator {
 public:
  explicit CountingAllocator(size_t limit) : limit_(limit) {}

  void* Allocate(size_t length) override {
    if (!Reserve(length)) return nullptr;
    void* data = calloc(length == 0 ? 1 : length, 1);
    if (data == nullptr) used_ -= length;
    return data;
  }
  void* AllocateUninitialized(size_t length) override {
    if (!Reserve(length)) return nullptr;
    void* data = malloc(length == 0 ? 1 : length);
    if (data == nullptr) used_ -= length;
    return data;
  }
  void Free(void* data, size_t length) override {
    free(data);
    used_ -= length;
  }

  size_t used() const { return used_.load(); }
  bool refused() const { return refused_.load(); }
  void clear_refused() { refused_ = false; }
  void set_limit(size_t limit) { limit_ = limit; }

 private:
  bool Reserve(size_t length) {
    size_t now = used_.fetch_add(length) + length;
    if (now > limit_.load()) {
      used_ -= length;
      refused_ = true;
      return false;
    }
    return true;
  }
  std::atomic<size_t> limit_;
  std::atomic<size_t> used_{0};
  std::atomic<bool> refused_{false};
};

struct LoadedModule {
  v8::Global<v8::Module> module;
  // Taken when it is compiled: V8 versions differ on whether a module's unbound script may
  // be asked for once it is evaluated (some abort the process), and it is the same script.
  v8::Global<v8::UnboundModuleScript> unbound;
  std::string name;
};

// A classic script by name, kept to make its code cache.
struct LoadedScript {
  v8::Global<v8::UnboundScript> script;
  std::string name;
};

}  // namespace

struct nv8_isolate {
  v8::Isolate* isolate = nullptr;
  v8::Global<v8::Context> context;
  std::shared_ptr<CountingAllocator> allocator;
  void* host = nullptr;
  nv8_native_fn native = nullptr;
  nv8_load_fn load = nullptr;
  // Modules by resolved name, and by identity hash for finding a referrer's name.
  std::unordered_map<std::string, LoadedModule*> modules_by_name;
  std::unordered_multimap<int, LoadedModule*> modules_by_hash;
  std::vector<std::unique_ptr<LoadedModule>> modules;
  std::vector<std::unique_ptr<LoadedScript>> scripts;
  // Code caches given with a source that V8 refused (another V8 version or other flags, or
  // damaged): the source was compiled afresh.
  size_t code_cache_rejected = 0;
  // Set (before TerminateExecution) by nv8_terminate and by the heap-limit callback.
  std::atomic<bool> terminating{false};
  std::atomic<bool> out_of_memory{false};
  size_t heap_limit = 0;
  // The text of the last result or error, returned borrowed until the next entry.
  std::string text;
};

namespace {

nv8_isolate* State(v8::Isolate* isolate) {
  return static_cast<nv8_isolate*>(isolate->GetData(0));
}

std::string ToUtf8(v8::Isolate* isolate, v8::Local<v8::Value> value) {
  v8::Local<v8::String> s;
  if (!value->ToString(isolate->GetCurrentContext()).ToLocal(&s)) return std::string();
  int length = s->Utf8Length(isolate);
  std::string out(static_cast<size_t>(length), '\0');
  s->WriteUtf8(isolate, out.data(), length, nullptr,
               v8::String::NO_NULL_TERMINATION | v8::String::REPLACE_INVALID_UTF8);
  return out;
}

v8::MaybeLocal<v8::String> FromUtf8(v8::Isolate* isolate, const char* ptr, size_t len) {
  if (len > static_cast<size_t>(v8::String::kMaxLength)) return v8::MaybeLocal<v8::String>();
  return v8::String::NewFromUtf8(isolate, ptr == nullptr ? "" : ptr, v8::NewStringType::kNormal,
                                 static_cast<int>(len));
}

// Room given past the limit when it is reached: enough for the allocation under way to
// succeed whatever it is (V8's largest objects, a two-byte string of String::kMaxLength or a
// FixedArray of its maximum length, are under 1 GiB), so that V8's own out-of-memory
// handling, which aborts the process, is never reached. The call is terminated at its next
// interrupt check, before it can allocate much more, and the isolate is dropped. A little
// room (32 MiB, as V8's examples give) was not enough: one 100 MB string past a 64 MiB heap
// aborted the process.
constexpr size_t kRoomPastLimit = size_t{1} << 30;

// The heap is about to reach its limit: stop the running call.
size_t NearHeapLimit(void* data, size_t current_limit, size_t /*initial_limit*/) {
  auto* state = static_cast<nv8_isolate*>(data);
  state->out_of_memory = true;
  state->terminating = true;
  state->isolate->TerminateExecution();
  return current_limit + kRoomPastLimit;
}

void Native(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  nv8_isolate* state = State(isolate);
  uint32_t id = info.Data().As<v8::Uint32>()->Value();
  int argc = info.Length();
  std::vector<nv8_arg> args(static_cast<size_t>(argc));
  std::vector<std::string> texts(static_cast<size_t>(argc));
  std::vector<std::shared_ptr<v8::BackingStore>> stores;
  for (int i = 0; i < argc; i++) {
    v8::Local<v8::Value> v = info[i];
    nv8_arg& a = args[static_cast<size_t>(i)];
    a = nv8_arg{NV8_UNDEFINED, 0, nullptr, 0};
    if (v->IsUndefined()) continue;
    if (v->IsBoolean()) {
      a.tag = NV8_BOOL;
      a.number = v->IsTrue() ? 1 : 0;
    } else if (v->IsNumber()) {
      a.tag = NV8_NUMBER;
      a.number = v.As<v8::Number>()->Value();
    } else if (v->IsArrayBuffer()) {
      auto store = v.As<v8::ArrayBuffer>()->GetBackingStore();
      a.tag = NV8_BYTES;
      a.ptr = static_cast<const char*>(store->Data());
      a.len = store->ByteLength();
      stores.push_back(std::move(store));
    } else if (v->IsArrayBufferView()) {
      auto view = v.As<v8::ArrayBufferView>();
      auto store = view->Buffer()->GetBackingStore();
      a.tag = NV8_BYTES;
      a.ptr = static_cast<const char*>(store->Data()) + view->ByteOffset();
      a.len = view->ByteLength();
      stores.push_back(std::move(store));
    } else {
      std::string& text = texts[static_cast<size_t>(i)];
      text = ToUtf8(isolate, v);
      a.tag = NV8_STRING;
      a.ptr = text.data();
      a.len = text.size();
    }
  }
  nv8_str out{nullptr, 0};
  int rc = state->native(state->host, id, args.data(), args.size(), &out);
  v8::Local<v8::String> text;
  if (!FromUtf8(isolate, out.ptr, out.len).ToLocal(&text)) {
    isolate->ThrowException(v8::Exception::RangeError(
        v8::String::NewFromUtf8Literal(isolate, "Invalid string length")));
    return;
  }
  if (rc == 0) {
    info.GetReturnValue().Set(text);
  } else {
    isolate->ThrowException(v8::Exception::Error(text));
  }
}

// Compiles `text` with `compile`, consuming `cache` when there is one (V8 checks that it was
// made from this source by this V8 with these flags, and compiles afresh when not).
template <typename Compile>
bool CompileCached(v8::Isolate* isolate, v8::Local<v8::String> text, const v8::ScriptOrigin& origin,
                   nv8_str cache, Compile compile) {
  if (cache.len == 0 || cache.len > static_cast<size_t>(INT32_MAX)) {
    v8::ScriptCompiler::Source source(text, origin);
    return compile(&source, v8::ScriptCompiler::kNoCompileOptions);
  }
  // Not owned: the bytes stay the host's, alive until the next callback.
  auto* data = new v8::ScriptCompiler::CachedData(reinterpret_cast<const uint8_t*>(cache.ptr),
                                                   static_cast<int>(cache.len));
  v8::ScriptCompiler::Source source(text, origin, data);
  bool ok = compile(&source, v8::ScriptCompiler::kConsumeCodeCache);
  if (source.GetCachedData() != nullptr && source.GetCachedData()->rejected) {
    State(isolate)->code_cache_rejected++;
  }
  return ok;
}

LoadedModule* FindByModule(nv8_isolate* state, v8::Local<v8::Module> module) {
  auto range = state->modules_by_hash.equal_range(module->GetIdentityHash());
  for (auto it = range.first; it != range.second; ++it) {
    if (it->second->module == module) return it->second;
  }
  return nullptr;
}

// Resolves and compiles (once per isolate) the module `specifier` imported from `referrer`.
// On failure, throws in the isolate and returns an empty handle.
v8::MaybeLocal<v8::Module> LoadModule(v8::Isolate* isolate, const std::string& referrer,
                                      v8::Local<v8::String> specifier) {
  nv8_isolate* state = State(isolate);
  std::string spec = ToUtf8(isolate, specifier);
  nv8_str name{nullptr, 0}, source{nullptr, 0}, cache{nullptr, 0};
  int rc = state->load(state->host, nv8_str{referrer.data(), referrer.size()},
                       nv8_str{spec.data(), spec.size()}, &name, &source, &cache);
  std::string resolved(name.ptr == nullptr ? "" : name.ptr, name.len);
  if (rc != 0) {
    v8::Local<v8::String> message;
    if (FromUtf8(isolate, resolved.data(), resolved.size()).ToLocal(&message)) {
      isolate->ThrowException(v8::Exception::Error(message));
    }
    return v8::MaybeLocal<v8::Module>();
  }
  auto found = state->modules_by_name.find(resolved);
  if (found != state->modules_by_name.end()) return found->second->module.Get(isolate);
  v8::Local<v8::String> text, resource;
  if (!FromUtf8(isolate, source.ptr, source.len).ToLocal(&text) ||
      !FromUtf8(isolate, resolved.data(), resolved.size()).ToLocal(&resource)) {
    isolate->ThrowException(v8::Exception::RangeError(
        v8::String::NewFromUtf8Literal(isolate, "module source too long")));
    return v8::MaybeLocal<v8::Module>();
  }
  v8::ScriptOrigin origin(isolate, resource, 0, 0, false, -1, v8::Local<v8::Value>(), false,
                          false, true);
  v8::Local<v8::Module> module;
  if (!CompileCached(isolate, text, origin, cache, [&](v8::ScriptCompiler::Source* source,
                                                      v8::ScriptCompiler::CompileOptions options) {
        return v8::ScriptCompiler::CompileModule(isolate, source, options).ToLocal(&module);
      })) {
    return v8::MaybeLocal<v8::Module>();
  }
  auto entry = std::make_unique<LoadedModule>();
  entry->module.Reset(isolate, module);
  entry->unbound.Reset(isolate, module->GetUnboundModuleScript());
  entry->name = resolved;
  state->modules_by_name.emplace(resolved, entry.get());
  state->modules_by_hash.emplace(module->GetIdentityHash(), entry.get());
  state->modules.push_back(std::move(entry));
  return module;
}

v8::MaybeLocal<v8::Module> ResolveStatic(v8::Local<v8::Context> context,
                                         v8::Local<v8::String> specifier,
                                         v8::Local<v8::FixedArray> /*import_assertions*/,
                                         v8::Local<v8::Module> referrer) {
  v8::Isolate* isolate = context->GetIsolate();
  LoadedModule* from = FindByModule(State(isolate), referrer);
  return LoadModule(isolate, from == nullptr ? std::string() : from->name, specifier);
}

void ReturnData(const v8::FunctionCallbackInfo<v8::Value>& info) {
  info.GetReturnValue().Set(info.Data());
}

// `import(specifier)`: loads, instantiates and evaluates the module, and settles with its
// namespace once its evaluation has.
v8::MaybeLocal<v8::Promise> DynamicImport(v8::Local<v8::Context> context,
                                          v8::Local<v8::Data> /*host_defined_options*/,
                                          v8::Local<v8::Value> resource_name,
                                          v8::Local<v8::String> specifier,
                                          v8::Local<v8::FixedArray> /*import_assertions*/) {
  v8::Isolate* isolate = context->GetIsolate();
  v8::EscapableHandleScope scope(isolate);
  v8::Local<v8::Promise::Resolver> resolver;
  if (!v8::Promise::Resolver::New(context).ToLocal(&resolver)) return v8::MaybeLocal<v8::Promise>();
  std::string referrer = resource_name->IsString() ? ToUtf8(isolate, resource_name) : "";
  v8::TryCatch try_catch(isolate);
  v8::Local<v8::Module> module;
  v8::Local<v8::Value> evaluation;
  bool loaded = LoadModule(isolate, referrer, specifier).ToLocal(&module);
  if (loaded && module->GetStatus() == v8::Module::kUninstantiated) {
    loaded = module->InstantiateModule(context, ResolveStatic).FromMaybe(false);
  }
  if (loaded && module->GetStatus() == v8::Module::kErrored) {
    isolate->ThrowException(module->GetException());
    loaded = false;
  }
  if (loaded) loaded = module->Evaluate(context).ToLocal(&evaluation);
  if (!loaded) {
    if (try_catch.HasTerminated() || !try_catch.HasCaught()) {
      try_catch.ReThrow();
      return v8::MaybeLocal<v8::Promise>();
    }
    if (resolver->Reject(context, try_catch.Exception()).IsNothing()) {
      return v8::MaybeLocal<v8::Promise>();
    }
    return scope.Escape(resolver->GetPromise());
  }
  v8::Local<v8::Function> to_namespace;
  if (!v8::Function::New(context, ReturnData, module->GetModuleNamespace()).ToLocal(&to_namespace)) {
    return v8::MaybeLocal<v8::Promise>();
  }
  if (evaluation->IsPromise()) {
    v8::Local<v8::Promise> then;
    if (!evaluation.As<v8::Promise>()->Then(context, to_namespace).ToLocal(&then)) {
      return v8::MaybeLocal<v8::Promise>();
    }
    return scope.Escape(then);
  }
  if (resolver->Resolve(context, module->GetModuleNamespace()).IsNothing()) {
    return v8::MaybeLocal<v8::Promise>();
  }
  return scope.Escape(resolver->GetPromise());
}

// The scopes every entry into an isolate needs.
struct Entry {
  explicit Entry(nv8_isolate* state)
      : isolate_scope(state->isolate),
        handles(state->isolate),
        context(state->context.Get(state->isolate)),
        context_scope(context),
        try_catch(state->isolate) {}
  v8::Isolate::Scope isolate_scope;
  v8::HandleScope handles;
  v8::Local<v8::Context> context;
  v8::Context::Scope context_scope;
  v8::TryCatch try_catch;
};

// The status of an entry that ended; sets state->text to an exception's message.
int Finish(nv8_isolate* state, Entry& entry, bool ok) {
  if (state->out_of_memory) return NV8_OUT_OF_MEMORY;
  if (state->terminating || entry.try_catch.HasTerminated()) return NV8_TERMINATED;
  if (ok) return NV8_OK;
  if (!entry.try_catch.HasCaught()) {
    state->text = "the call failed without an exception";
    return NV8_ERROR;
  }
  v8::Local<v8::Value> exception = entry.try_catch.Exception();
  v8::Local<v8::Value> stack;
  if (exception->IsObject() &&
      exception.As<v8::Object>()
          ->Get(entry.context, v8::String::NewFromUtf8Literal(state->isolate, "stack"))
          .ToLocal(&stack) &&
      stack->IsString()) {
    state->text = ToUtf8(state->isolate, stack);
  } else {
    state->text = ToUtf8(state->isolate, exception);
  }
  return NV8_EXCEPTION;
}

}  // namespace

extern "C" {

// Starts V8 once per process. `flags` are V8 flags (may be empty).
void nv8_init(const char* flags, size_t flags_len) {
  std::call_once(g_init_once, [&] {
    if (flags_len > 0) v8::V8::SetFlagsFromString(std::string(flags, flags_len).c_str());
    g_platform = v8::platform::NewDefaultPlatform(1);
    v8::V8::InitializePlatform(g_platform.get());
    v8::V8::Initialize();
  });
}

const char* nv8_version() { return v8::V8::GetVersion(); }

// A new isolate with one context whose globals hold the natives `names[i]` (each calling
// `native` with id i). `stack_bytes` bounds the JS stack below the caller's frame, so the
// isolate must be used from this thread (or one entering at a similar depth).
nv8_isolate* nv8_isolate_new(size_t heap_bytes, size_t array_buffer_bytes, size_t stack_bytes,
                             void* host, nv8_native_fn native, nv8_load_fn load,
                             const nv8_str* names, size_t count) {
  auto state = std::make_unique<nv8_isolate>();
  state->host = host;
  state->native = native;
  state->load = load;
  state->heap_limit = heap_bytes;
  state->allocator = std::make_shared<CountingAllocator>(array_buffer_bytes);
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator_shared = state->allocator;
  params.constraints.ConfigureDefaultsFromHeapSize(0, heap_bytes);
  v8::Isolate* isolate = v8::Isolate::New(params);
  if (isolate == nullptr) return nullptr;
  state->isolate = isolate;
  isolate->SetData(0, state.get());
  isolate->AddNearHeapLimitCallback(NearHeapLimit, state.get());
  isolate->SetMicrotasksPolicy(v8::MicrotasksPolicy::kExplicit);
  isolate->SetHostImportModuleDynamicallyCallback(DynamicImport);
  // Atomics.wait would block the worker thread (no other thread can notify it), holding the
  // worker while using no CPU time; it throws instead, as in QuickJS.
  isolate->SetAllowAtomicsWait(false);
  char here = 0;
  uintptr_t top = reinterpret_cast<uintptr_t>(&here);
  isolate->SetStackLimit(top - stack_bytes);
  {
    v8::Isolate::Scope isolate_scope(isolate);
    v8::HandleScope handles(isolate);
    v8::Local<v8::ObjectTemplate> global = v8::ObjectTemplate::New(isolate);
    for (size_t i = 0; i < count; i++) {
      v8::Local<v8::String> name;
      if (!FromUtf8(isolate, names[i].ptr, names[i].len).ToLocal(&name)) continue;
      global->Set(name, v8::FunctionTemplate::New(isolate, Native,
                                                  v8::Integer::NewFromUnsigned(
                                                      isolate, static_cast<uint32_t>(i))));
    }
    v8::Local<v8::Context> context = v8::Context::New(isolate, nullptr, global);
    if (context.IsEmpty()) {
      isolate->Dispose();
      return nullptr;
    }
    state->context.Reset(isolate, context);
  }
  return state.release();
}

void nv8_isolate_free(nv8_isolate* state) {
  if (state == nullptr) return;
  v8::Isolate* isolate = state->isolate;
  state->modules_by_name.clear();
  state->modules_by_hash.clear();
  state->modules.clear();
  state->scripts.clear();
  state->context.Reset();
  // The default platform keeps a task queue per isolate until told it is gone.
  v8::platform::NotifyIsolateShutdown(g_platform.get(), isolate);
  isolate->Dispose();
  delete state;
}

// Runs a classic script, consuming `cache` (may be empty) if V8 accepts it. The script is
// kept under `name` for nv8_code_cache. On NV8_EXCEPTION/NV8_ERROR, *out is the message.
int nv8_eval_script(nv8_isolate* state, nv8_str source, nv8_str name, nv8_str cache,
                    nv8_str* out) {
  Entry entry(state);
  v8::Isolate* isolate = state->isolate;
  v8::Local<v8::String> text, resource;
  bool ok = FromUtf8(isolate, source.ptr, source.len).ToLocal(&text) &&
            FromUtf8(isolate, name.ptr, name.len).ToLocal(&resource);
  if (ok) {
    v8::ScriptOrigin origin(isolate, resource);
    v8::Local<v8::UnboundScript> unbound;
    ok = CompileCached(isolate, text, origin, cache,
                       [&](v8::ScriptCompiler::Source* compiled,
                           v8::ScriptCompiler::CompileOptions options) {
                         return v8::ScriptCompiler::CompileUnboundScript(isolate, compiled, options)
                             .ToLocal(&unbound);
                       });
    if (ok) {
      auto kept = std::make_unique<LoadedScript>();
      kept->script.Reset(isolate, unbound);
      kept->name.assign(name.ptr == nullptr ? "" : name.ptr, name.len);
      state->scripts.push_back(std::move(kept));
      ok = !unbound->BindToCurrentContext()->Run(entry.context).IsEmpty();
    }
  }
  int status = Finish(state, entry, ok);
  *out = nv8_str{state->text.data(), state->text.size()};
  return status;
}

// Calls the global function `name` with `args`. On NV8_OK, *out is the result if it is a
// string (else empty, with *is_string false); otherwise the message.
int nv8_call(nv8_isolate* state, nv8_str name, const nv8_arg* args, size_t nargs, nv8_str* out,
             bool* is_string) {
  Entry entry(state);
  v8::Isolate* isolate = state->isolate;
  *is_string = false;
  state->text.clear();
  v8::Local<v8::String> key;
  v8::Local<v8::Value> value;
  bool ok = FromUtf8(isolate, name.ptr, name.len).ToLocal(&key) &&
            entry.context->Global()->Get(entry.context, key).ToLocal(&value);
  if (ok && !value->IsFunction()) {
    state->text = "not a function: " + std::string(name.ptr, name.len);
    *out = nv8_str{state->text.data(), state->text.size()};
    return NV8_ERROR;
  }
  std::vector<v8::Local<v8::Value>> argv;
  for (size_t i = 0; ok && i < nargs; i++) {
    const nv8_arg& a = args[i];
    switch (a.tag) {
      case NV8_BOOL:
        argv.push_back(v8::Boolean::New(isolate, a.number != 0));
        break;
      case NV8_NUMBER:
        argv.push_back(v8::Number::New(isolate, a.number));
        break;
      case NV8_STRING: {
        v8::Local<v8::String> s;
        ok = FromUtf8(isolate, a.ptr, a.len).ToLocal(&s);
        if (ok) argv.push_back(s);
        break;
      }
      case NV8_BYTES: {
        auto store = v8::ArrayBuffer::NewBackingStore(isolate, a.len);
        if (a.len > 0) memcpy(store->Data(), a.ptr, a.len);
        argv.push_back(v8::ArrayBuffer::New(isolate, std::move(store)));
        break;
      }
      default:
        argv.push_back(v8::Undefined(isolate));
    }
  }
  v8::Local<v8::Value> result;
  if (ok) {
    ok = value.As<v8::Function>()
             ->Call(entry.context, entry.context->Global(), static_cast<int>(argv.size()),
                    argv.data())
             .ToLocal(&result);
  }
  int status = Finish(state, entry, ok);
  if (status == NV8_OK && result->IsString()) {
    state->text = ToUtf8(isolate, result);
    *is_string = true;
  }
  *out = nv8_str{state->text.data(), state->text.size()};
  return status;
}

// Runs every queued microtask (promise reactions), then the isolate's pending foreground
// tasks (V8 posts some for its collector, and FinalizationRegistry cleanups, which run
// JavaScript: they run here, within the call's deadline) and the microtasks those queued.
// Without this, nothing would ever run an isolate's posted tasks: there is no event loop.
int nv8_run_microtasks(nv8_isolate* state) {
  Entry entry(state);
  state->isolate->PerformMicrotaskCheckpoint();
  for (int round = 0; round < 16 && !state->terminating && !entry.try_catch.HasTerminated(); round++) {
    if (!v8::platform::PumpMessageLoop(g_platform.get(), state->isolate)) break;
    state->isolate->PerformMicrotaskCheckpoint();
  }
  return Finish(state, entry, true);
}

// V8 checks its heap limit when it collects garbage, so one large object (a 100 MB string)
// can take the heap past it without the callback: true (and out of memory from then on) when
// the heap is over the limit. Asked after each call rather than after each entry.
bool nv8_heap_over_limit(nv8_isolate* state) {
  if (state->out_of_memory) return true;
  v8::HeapStatistics stats;
  state->isolate->GetHeapStatistics(&stats);
  if (stats.used_heap_size() > state->heap_limit) state->out_of_memory = true;
  return state->out_of_memory;
}

// Stops the running call (from any thread). The entry returns NV8_TERMINATED.
void nv8_terminate(nv8_isolate* state) {
  state->terminating = true;
  state->isolate->TerminateExecution();
}

// After a terminated entry: lets the isolate run again.
void nv8_clear_termination(nv8_isolate* state) {
  state->isolate->CancelTerminateExecution();
  state->terminating = false;
}

// Heap bytes in use plus ArrayBuffer bytes.
size_t nv8_memory_used(nv8_isolate* state) {
  v8::HeapStatistics stats;
  state->isolate->GetHeapStatistics(&stats);
  return stats.total_heap_size() + state->allocator->used();
}

// Whether an ArrayBuffer allocation was refused since the last call (and clears it).
bool nv8_take_array_buffer_refused(nv8_isolate* state) {
  bool refused = state->allocator->refused();
  state->allocator->clear_refused();
  return refused;
}

void nv8_set_array_buffer_limit(nv8_isolate* state, size_t bytes) {
  state->allocator->set_limit(bytes);
}

// The code cache of the module or classic script `name` (the last one of that name): its
// bytecode, including every function compiled so far, so that a later nv8_isolate_new given
// it skips parsing and compiling them. 0 with the bytes in *out (valid until the next entry),
// 1 if no module or script has that name, 2 if V8 made none.
int nv8_code_cache(nv8_isolate* state, nv8_str name, nv8_str* out) {
  *out = nv8_str{nullptr, 0};
  std::string wanted(name.ptr == nullptr ? "" : name.ptr, name.len);
  v8::Isolate* isolate = state->isolate;
  v8::Isolate::Scope isolate_scope(isolate);
  v8::HandleScope handles(isolate);
  std::unique_ptr<v8::ScriptCompiler::CachedData> data;
  auto found = state->modules_by_name.find(wanted);
  if (found != state->modules_by_name.end()) {
    v8::Local<v8::Module> module = found->second->module.Get(isolate);
    if (module->GetStatus() == v8::Module::kErrored) return 2;
    data.reset(v8::ScriptCompiler::CreateCodeCache(found->second->unbound.Get(isolate)));
  } else {
    LoadedScript* script = nullptr;
    for (auto& s : state->scripts) {
      if (s->name == wanted) script = s.get();
    }
    if (script == nullptr) return 1;
    data.reset(v8::ScriptCompiler::CreateCodeCache(script->script.Get(isolate)));
  }
  if (data == nullptr || data->length <= 0) return 2;
  state->text.assign(reinterpret_cast<const char*>(data->data), static_cast<size_t>(data->length));
  *out = nv8_str{state->text.data(), state->text.size()};
  return 0;
}

// Code caches refused so far (see nv8_isolate::code_cache_rejected).
size_t nv8_code_cache_rejected(nv8_isolate* state) { return state->code_cache_rejected; }

// Asks V8 to collect garbage soon (the isolate is idle).
void nv8_low_memory(nv8_isolate* state) { state->isolate->LowMemoryNotification(); }

}  // extern "C"
