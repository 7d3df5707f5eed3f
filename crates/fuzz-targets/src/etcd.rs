//! etcd's JSON gateway answers, as the SkyDNS publisher reads them.

use opennotr_dns::etcd::fuzzing::read;

use crate::split_ctl;

/// The statuses the control byte picks from.
const STATUSES: [u16; 6] = [200, 404, 500, 400, 503, 204];

/// Every call's reading of one answer (status from the control byte): a
/// refusal or a result, or garbage with a short, printable reason (it is
/// logged); and the reconciliation never deletes or overwrites a record
/// that the listing shows held by another owner.
pub fn etcd_reply(data: &[u8]) {
    let (ctl, body) = split_ctl(data);
    let r = read(STATUSES[usize::from(ctl) % STATUSES.len()], body);
    if let Some(why) = &r.garbage {
        assert!(why.chars().count() <= 300 && !why.chars().any(char::is_control), "{why:?}");
    }
    for read in &r.reads {
        if let Err(why) = read {
            assert!(why.chars().count() <= 300 && !why.chars().any(char::is_control), "{why:?}");
        }
    }
    assert!(r.foreign_touched.is_empty(), "another owner's records touched: {:?}", r.foreign_touched);
}
