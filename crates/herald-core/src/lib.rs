//! Herald's domain vocabulary: the ids and error codes every other crate shares.
//! It knows nothing of HTTP or SQL, so any layer can depend on it.
#![forbid(unsafe_code)]

pub mod access;
pub mod error;
pub mod platforms;
pub mod time;

pub use access::{Action, TeamRole};
pub use error::{Error, ErrorCode};
