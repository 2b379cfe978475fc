//! Durable state: the backends of the [`Store`](crate::rollout::ports::Store) port. sled (embedded, one
//! replica, the default) and etcd (several replicas, HA: `membership` holds leases and ownership).

pub mod etcd;
mod etcd_retention;
mod etcd_targets;
mod etcd_tls;
pub mod membership;
pub mod migrate;
pub mod sled;

use std::path::Path;

pub use self::etcd::EtcdStore;
pub use self::sled::SledStore;
pub use crate::rollout::ports::{Created, ListFilter, SharedStore as Store, StoreError};

/// Records are JSON in every backend. Serialising our own plain structs cannot fail (no maps with
/// non-string keys, no I/O).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialisable record")
}

pub(crate) fn from_json<'de, T: serde::Deserialize<'de>>(key: &[u8], v: &'de [u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v)
        .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error: e.to_string() })
}

/// Assign consecutive seqs after the rollout's last one.
pub(crate) fn number(r: &mut crate::rollout::Rollout, events: &mut [crate::rollout::Event]) {
    for e in events.iter_mut() {
        r.last_seq += 1;
        e.seq = r.last_seq;
    }
}

impl crate::rollout::ports::SharedStore {
    /// Open the daemon's on-disk store (sled) at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(SledStore::open(path)?))
    }
}
