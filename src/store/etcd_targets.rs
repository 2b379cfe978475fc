//! One active rollout per router object on etcd (sled's `targets` rule): `targets/<object>/<part>` →
//! the id of the active rollout driving that part of the object (`*`: all of it; see
//! [`crate::rollout::RouterSpec::targets`]). A create puts its claims only if they are free, in the
//! create's transaction; the terminal transition deletes them, in its own; so two replicas racing
//! for one object cannot both win.

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::etcd::Inner;
use crate::rollout::Rollout;
use crate::rollout::ports::StoreError;

impl Inner {
    pub(super) fn target_key(&self, target: &str, part: &str) -> String {
        self.key(&format!("targets/{target}/{part}"))
    }

    /// Compares that hold while `part` of `target` is free: no claim on the whole object and none on
    /// that part (for `*`: no claim at all).
    pub(super) fn target_free(&self, target: &str, part: &str) -> Vec<Compare> {
        if part == "*" {
            let all = self.key(&format!("targets/{target}/"));
            vec![Compare::create_revision(all, CompareOp::Equal, 0).with_prefix()]
        } else {
            [self.target_key(target, "*"), self.target_key(target, part)]
                .map(|k| Compare::create_revision(k, CompareOp::Equal, 0))
                .into()
        }
    }

    /// The claim `part` of `target` collides with: (claimed part, rollout id).
    pub(super) async fn target_clash(&self, target: &str, part: &str) -> Result<Option<(String, String)>, StoreError> {
        let p = self.key(&format!("targets/{target}/"));
        for kv in self.range(&format!("targets/{target}/"), GetOptions::new()).await? {
            let claimed = String::from_utf8_lossy(&kv.key()[p.len()..]).into_owned();
            if part == "*" || claimed == "*" || claimed == part {
                return Ok(Some((claimed, String::from_utf8_lossy(kv.value()).into_owned())));
            }
        }
        Ok(None)
    }

    /// Ops releasing `r`'s router claims (each only if still `r`'s).
    pub(super) fn release_targets(&self, r: &Rollout) -> Vec<TxnOp> {
        r.router
            .targets(&r.namespace)
            .iter()
            .map(|(target, part)| {
                let k = self.target_key(target, part);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::value(k.clone(), CompareOp::Equal, r.id.clone())])
                        .and_then([TxnOp::delete(k, None)]),
                )
            })
            .collect()
    }
}
