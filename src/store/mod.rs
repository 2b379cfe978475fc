//! Durable state: the backends of the [`Store`](crate::rollout::ports::Store) port. sled today; a
//! new backend is a module here that implements the port.

pub mod sled;

use std::path::Path;

pub use self::sled::SledStore;
pub use crate::rollout::ports::{Created, ListFilter, SharedStore as Store, StoreError};

impl crate::rollout::ports::SharedStore {
    /// Open the daemon's on-disk store (sled) at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(SledStore::open(path)?))
    }
}
