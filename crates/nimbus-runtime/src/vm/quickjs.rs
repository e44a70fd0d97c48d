//! QuickJS (through `rquickjs`): the interpreter every build has.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use rquickjs::function::Rest;
use rquickjs::{ArrayBuffer, Context, Ctx, Function, Runtime, Value};

use super::{Arg, Natives, VmFailure, NATIVES};
use crate::modules::ModuleMap;
use crate::{ModuleSet, RuntimeLimits};

pub(crate) struct QuickVm {
    // Field order matters: the context must drop before its runtime.
    context: Context,
    runtime: Runtime,
    deadline: Rc<Cell<Option<Instant>>>,
    interrupted: Rc<Cell<bool>>,
    pub memory_limit: usize,
}

fn js_error(context: &str, e: rquickjs::Error) -> String {
    format!("{context}: {e}")
}

/// The exception an `rquickjs` call failed with, as text.
fn caught(ctx: &Ctx<'_>, error: rquickjs::Error) -> String {
    if !matches!(error, rquickjs::Error::Exception) {
        return error.to_string();
    }
    let exception = ctx.catch();
    if let Some(e) = exception.as_exception() {
        return e.to_string();
    }
    match exception.as_string().map(|s| s.to_string()) {
        Some(Ok(text)) => text,
        _ => format!("{exception:?}"),
    }
}

/// A JavaScript value as a native's argument. No native takes binary data (bodies pass as
/// binary strings), so an ArrayBuffer arrives as its string conversion, like any object.
enum Owned {
    Undefined,
    Bool(bool),
    Number(f64),
    Str(String),
}

fn owned(value: &Value<'_>) -> Owned {
    if let Some(b) = value.as_bool() {
        Owned::Bool(b)
    } else if let Some(n) = value.as_number() {
        Owned::Number(n)
    } else if let Some(s) = value.as_string() {
        Owned::Str(s.to_string().unwrap_or_default())
    } else if value.is_undefined() || value.is_null() {
        Owned::Undefined
    } else {
        // Anything else arrives as its string conversion, as V8's side does.
        Owned::Str(
            value
                .get::<rquickjs::Coerced<String>>()
                .map(|c| c.0)
                .unwrap_or_default(),
        )
    }
}

impl QuickVm {
    /// A runtime with no modules yet ([`QuickVm::set_modules`] gives them).
    pub fn new(natives: Natives, limits: &RuntimeLimits) -> Result<QuickVm, String> {
        let runtime = Runtime::new().map_err(|e| js_error("creating a runtime", e))?;
        runtime.set_memory_limit(limits.memory_bytes);
        runtime.set_max_stack_size(limits.max_stack_bytes);
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let interrupted = Rc::new(Cell::new(false));
        {
            let deadline = deadline.clone();
            let interrupted = interrupted.clone();
            runtime.set_interrupt_handler(Some(Box::new(move || match deadline.get() {
                Some(at) if Instant::now() >= at => {
                    interrupted.set(true);
                    true
                }
                _ => false,
            })));
        }
        let context = Context::full(&runtime).map_err(|e| js_error("creating a context", e))?;
        let natives = Rc::new(natives);
        context.with(|ctx| -> Result<(), String> {
            let globals = ctx.globals();
            for (id, name) in NATIVES.iter().enumerate() {
                let natives = natives.clone();
                let id = id as u32;
                let function = Function::new(ctx.clone(), move |args: Rest<Value<'_>>| -> String {
                    let values: Vec<Owned> = args.0.iter().map(owned).collect();
                    let args: Vec<Arg<'_>> = values
                        .iter()
                        .map(|v| match v {
                            Owned::Undefined => Arg::Undefined,
                            Owned::Bool(b) => Arg::Bool(*b),
                            Owned::Number(n) => Arg::Number(*n),
                            Owned::Str(s) => Arg::Str(s),
                        })
                        .collect();
                    // Every native answers with text; an `Err` would be a wrong id.
                    natives.call(id, &args).unwrap_or_else(|e| format!("e{e}"))
                })
                .map_err(|e| js_error("installing natives", e))?;
                globals
                    .set(*name, function)
                    .map_err(|e| js_error("installing natives", e))?;
            }
            Ok(())
        })?;
        Ok(QuickVm {
            context,
            runtime,
            deadline,
            interrupted,
            memory_limit: limits.memory_bytes,
        })
    }

    /// A failure of an entry: the deadline, the allocator's limit, or an exception.
    fn failure(&self, message: String) -> VmFailure {
        if self.interrupted.get() {
            VmFailure::Terminated
        } else if message.contains("out of memory") {
            VmFailure::OutOfMemory
        } else {
            VmFailure::Exception(message)
        }
    }

    /// The modules this runtime loads from.
    pub fn set_modules(&mut self, modules: &ModuleSet) {
        self.runtime.set_loader(
            ModuleMap {
                modules: modules.modules.clone(),
            },
            ModuleMap {
                modules: modules.modules.clone(),
            },
        );
    }

    pub fn eval_script(&mut self, _name: &str, source: &str) -> Result<(), VmFailure> {
        let result = self
            .context
            .with(|ctx| ctx.eval::<(), _>(source).map_err(|e| caught(&ctx, e)));
        result.map_err(|message| self.failure(message))
    }

    pub fn call(&mut self, name: &str, args: &[Arg<'_>]) -> Result<Option<String>, VmFailure> {
        let result = self.context.with(|ctx| -> Result<Option<String>, String> {
            let run = || -> rquickjs::Result<Option<String>> {
                let function: Function = ctx.globals().get(name)?;
                let mut values: Vec<Value<'_>> = Vec::with_capacity(args.len());
                for arg in args {
                    values.push(match arg {
                        Arg::Undefined => Value::new_undefined(ctx.clone()),
                        Arg::Bool(b) => Value::new_bool(ctx.clone(), *b),
                        Arg::Number(n) => Value::new_number(ctx.clone(), *n),
                        Arg::Str(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
                        Arg::Bytes(b) => ArrayBuffer::new(ctx.clone(), b.to_vec())?.into_value(),
                    });
                }
                let value: Value<'_> = function.call((Rest(values),))?;
                match value.as_string() {
                    Some(s) => Ok(Some(s.to_string()?)),
                    None => Ok(None),
                }
            };
            run().map_err(|e| caught(&ctx, e))
        });
        result.map_err(|message| self.failure(message))
    }

    pub fn run_jobs(&mut self) -> Result<Option<String>, VmFailure> {
        let mut escaped = None;
        loop {
            match self.runtime.execute_pending_job() {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) if self.interrupted.get() => return Err(VmFailure::Terminated),
                Err(exception) => {
                    // An exception escaped a job: report it, keep draining.
                    let message = exception
                        .0
                        .with(|ctx| ctx.catch().as_exception().map(|e| e.to_string()));
                    escaped.get_or_insert_with(|| {
                        message.unwrap_or_else(|| "an exception escaped a job".into())
                    });
                }
            }
        }
        Ok(escaped)
    }

    pub fn arm(&mut self, deadline: Instant) {
        self.interrupted.set(false);
        self.deadline.set(Some(deadline));
    }

    pub fn disarm(&mut self) -> bool {
        self.deadline.set(None);
        self.interrupted.get()
    }

    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.runtime.memory_usage().malloc_size).unwrap_or(0)
    }

    pub fn set_memory_limit(&mut self, bytes: usize) {
        if bytes != self.memory_limit {
            self.runtime.set_memory_limit(bytes);
            self.memory_limit = bytes;
        }
    }
}
