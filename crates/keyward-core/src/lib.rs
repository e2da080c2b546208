//! keyward's domain: key format, digests, permission expressions, checks, and the storage trait.
//!
//! Nothing here knows about HTTP or SQL. The server and the stores depend on this crate,
//! never the other way round.

pub mod access_log;
pub mod changes;
pub mod clock;
pub mod digest;
pub mod duration;
pub mod error;
pub mod id;
pub mod keyfmt;
pub mod limits;
pub mod model;
pub mod perm;
pub mod records;
pub mod secret;
pub mod service;
pub mod store;
pub mod users;
pub mod vault;
pub mod verify;
pub mod webhooks;

pub use clock::{Clock, FakeClock, SystemClock};
pub use error::{Error, StoreError};
pub use secret::KeyMaterial;
pub use service::{Actor, Service};
pub use store::Store;
