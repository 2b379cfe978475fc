//! Retention on etcd (`[store] retention`), sled's rule: a finished rollout last updated before the
//! cutoff goes with its events, the Idempotency-Keys that point to it and any router claim still
//! naming it. Every replica sweeps; each rollout goes in one transaction conditioned on its record
//! being exactly the finished one that was read, so concurrent sweeps delete it once, and a record
//! that changed since (or any live rollout) is never touched.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::Deserialize;

use super::etcd::{IdemRecord, Inner};
use super::from_json;
use crate::rollout::ports::StoreError;
use crate::rollout::{Millis, Phase, Rollout};

/// Keys read per request while scanning (bounded memory and request size on any history).
const PAGE: i64 = 500;
/// Operations per transaction, under etcd's default `--max-txn-ops` of 128.
const MAX_OPS: usize = 100;

/// A finished rollout past retention, as read.
struct Expired {
    id: String,
    key: Vec<u8>,
    mod_revision: i64,
    record: Rollout,
}

/// The fields retention looks at, decoded without the rest of the record.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Age {
    phase: Phase,
    updated_at: Millis,
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Inner {
    /// Every key-value under `rest`, read `PAGE` keys at a time; `f` sees each one.
    async fn scan(
        &self,
        rest: &str,
        mut f: impl FnMut(etcd_client::KeyValue) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let prefix = self.key(rest).into_bytes();
        let end = prefix_end(&prefix);
        let mut from = prefix;
        loop {
            let opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            let mut resp = self.client.kv_client().get(from.clone(), Some(opts)).await?;
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { return Ok(()) };
            from = last.key().to_vec();
            from.push(0);
            for kv in kvs {
                f(kv)?;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Delete every finished rollout last updated before `cutoff`; returns how many this call deleted.
    pub(crate) async fn sweep(&self, cutoff: Millis) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        self.scan("rollouts/", |kv| {
            let age: Age = from_json(kv.key(), kv.value())?;
            if age.phase.is_terminal() && age.updated_at < cutoff {
                let record: Rollout = from_json(kv.key(), kv.value())?;
                let (mod_revision, (key, _)) = (kv.mod_revision(), kv.into_key_value());
                expired.push(Expired { id: record.id.clone(), key, mod_revision, record });
            }
            Ok(())
        })
        .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let gone: std::collections::HashSet<&str> = expired.iter().map(|e| e.id.as_str()).collect();
        let mut idem: std::collections::HashMap<String, Vec<(Vec<u8>, i64)>> = Default::default();
        self.scan("idem/", |kv| {
            let rec: IdemRecord = from_json(kv.key(), kv.value())?;
            if gone.contains(rec.id.as_str()) {
                let rev = kv.mod_revision();
                idem.entry(rec.id).or_default().push((kv.into_key_value().0, rev));
            }
            Ok(())
        })
        .await?;
        let mut deleted = 0;
        for e in &expired {
            let mut ops = vec![
                TxnOp::delete(e.key.clone(), None),
                TxnOp::delete(
                    self.key(&format!("events/{}/", e.id)),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            ];
            ops.extend(self.release_targets(&e.record));
            // The active key never names a finished rollout, except one left by an older version.
            let akey = self.active_key(&e.record);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::value(akey.clone(), CompareOp::Equal, e.id.clone())])
                    .and_then([TxnOp::delete(akey, None)]),
            ));
            let keys = idem.remove(&e.id).unwrap_or_default();
            let room = MAX_OPS.saturating_sub(ops.len());
            let (now, later) = keys.split_at(keys.len().min(room));
            let when: Vec<Compare> =
                std::iter::once(Compare::mod_revision(e.key.clone(), CompareOp::Equal, e.mod_revision))
                    .chain(now.iter().map(|(k, rev)| Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)))
                    .collect();
            ops.extend(now.iter().map(|(k, _)| TxnOp::delete(k.clone(), None)));
            if !self.client.kv_client().txn(Txn::new().when(when).and_then(ops)).await?.succeeded() {
                continue; // another replica's sweep deleted it (or an Idempotency-Key changed): next round
            }
            deleted += 1;
            // More Idempotency-Keys than one transaction holds: each goes if it still names this rollout.
            for (k, rev) in later {
                let txn = Txn::new()
                    .when([Compare::mod_revision(k.clone(), CompareOp::Equal, *rev)])
                    .and_then([TxnOp::delete(k.clone(), None)]);
                self.client.kv_client().txn(txn).await?;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_range_follows_every_key_under_it() {
        assert_eq!(prefix_end(b"/vane/rollouts/"), b"/vane/rollouts0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
