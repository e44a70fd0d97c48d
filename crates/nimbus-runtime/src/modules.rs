//! The module loader: resolves relative specifiers over a pushed module set.

use std::collections::BTreeMap;
use std::sync::Arc;

use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::module::Declared;
use rquickjs::{Ctx, Error, Module, Result};

/// Resolves and loads the modules of one tenant's push.
pub(crate) struct ModuleMap {
    pub modules: Arc<BTreeMap<String, String>>,
}

/// Joins `name` (relative to `base`'s directory unless it has no `./`/`../`) and removes
/// `.` and `..` segments. Escaping the root is an error.
pub(crate) fn resolve_path(base: &str, name: &str) -> Option<String> {
    let relative = name.starts_with("./") || name.starts_with("../");
    let mut parts: Vec<&str> = Vec::new();
    if relative {
        parts.extend(base.split('/'));
        parts.pop(); // the base file name
    }
    for segment in name.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

impl Resolver for ModuleMap {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> Result<String> {
        match resolve_path(base, name) {
            Some(path) if self.modules.contains_key(&path) => Ok(path),
            Some(path) => Err(Error::new_resolving_message(
                base,
                name,
                format!("module {path:?} is not part of the pushed code"),
            )),
            None => Err(Error::new_resolving_message(
                base,
                name,
                "the path leaves the functions directory",
            )),
        }
    }
}

impl Loader for ModuleMap {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> Result<Module<'js, Declared>> {
        match self.modules.get(name) {
            Some(source) => Module::declare(ctx.clone(), name, source.as_bytes()),
            None => Err(Error::new_loading_message(name, "module not found")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_path;

    #[test]
    fn paths() {
        assert_eq!(
            resolve_path("orders.js", "./_deps/A.js").as_deref(),
            Some("_deps/A.js")
        );
        assert_eq!(
            resolve_path("_deps/A.js", "./B.js").as_deref(),
            Some("_deps/B.js")
        );
        assert_eq!(
            resolve_path("dir/x.js", "../_deps/A.js").as_deref(),
            Some("_deps/A.js")
        );
        assert_eq!(resolve_path("x.js", "../../etc/passwd"), None);
        assert_eq!(
            resolve_path("__nimbus", "orders.js").as_deref(),
            Some("orders.js")
        );
    }
}
