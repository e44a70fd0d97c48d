//! The build has no V8: no isolate can be made.

use crate::{Arg, Error, Failure, Host, Limits};

/// Never constructed in a build without V8.
pub struct Isolate {
    never: std::convert::Infallible,
}

/// V8's version; none here.
pub fn version() -> Option<&'static str> {
    None
}

impl Isolate {
    pub fn new(_limits: Limits, _natives: &[&str], _host: Box<dyn Host>) -> Result<Isolate, Error> {
        Err(Error::NotBuilt)
    }
    pub fn eval_script(&mut self, _name: &str, _source: &str) -> Result<(), Failure> {
        match self.never {}
    }
    pub fn eval_script_cached(
        &mut self,
        _name: &str,
        _source: &str,
        _code_cache: Option<&[u8]>,
    ) -> Result<(), Failure> {
        match self.never {}
    }
    pub fn code_cache(&mut self, _name: &str) -> Option<Vec<u8>> {
        match self.never {}
    }
    pub fn code_caches_rejected(&self) -> usize {
        match self.never {}
    }
    pub fn call(&mut self, _name: &str, _args: &[Arg<'_>]) -> Result<Option<String>, Failure> {
        match self.never {}
    }
    pub fn run_microtasks(&mut self) -> Result<(), Failure> {
        match self.never {}
    }
    pub fn heap_over_limit(&mut self) -> bool {
        match self.never {}
    }
    pub fn arm(&mut self, _deadline: std::time::Instant) {
        match self.never {}
    }
    pub fn disarm(&mut self) -> bool {
        match self.never {}
    }
    pub fn memory_bytes(&self) -> usize {
        match self.never {}
    }
    pub fn take_array_buffer_refused(&mut self) -> bool {
        match self.never {}
    }
    pub fn set_array_buffer_limit(&mut self, _bytes: usize) {
        match self.never {}
    }
    pub fn host_mut(&mut self) -> &mut dyn Host {
        match self.never {}
    }
}
