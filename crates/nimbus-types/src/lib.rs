//! Values, documents and identifiers of Nimbus, independent of storage and transport.
//!
//! This crate does no I/O. It owns:
//! - [`Value`]: the Convex value model (null, int64, float64, boolean, string, bytes,
//!   array, object) with its total order ([`value`]) and its JSON wire form ([`json`]),
//! - [`DocumentId`]: opaque, table-encoding, tenant-salted document IDs ([`id`]),
//! - order-preserving index keys ([`index_key`]),
//! - validators and schemas ([`validator`], [`schema`]) and query expressions ([`query`]),
//! - [`Timestamp`] and the [`TypesError`] returned by every fallible function here.

pub mod error;
pub mod id;
pub mod index_key;
pub mod json;
pub mod names;
pub mod query;
pub mod schema;
pub mod timestamp;
pub mod validator;
pub mod value;
pub mod wire;

pub use error::TypesError;
pub use id::{DocumentId, IdCodec, TableNumber};
pub use timestamp::Timestamp;
pub use value::{Document, Object, Value};
